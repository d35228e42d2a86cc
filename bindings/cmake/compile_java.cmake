# cmake -P compile_java.cmake: compiles the SWIG-generated and hand-written
# Java sources into a jar. Run at build time because SWIG decides which
# generated files exist (one per struct of the header).
#   -DJAVAC=... -DJAR=... -DGENERATED_DIR=... -DSOURCE_DIR=... -DCLASSES_DIR=... -DOUTPUT=commvq.jar
file(GLOB_RECURSE _sources "${GENERATED_DIR}/*.java" "${SOURCE_DIR}/*.java")
file(REMOVE_RECURSE "${CLASSES_DIR}")
file(MAKE_DIRECTORY "${CLASSES_DIR}")
execute_process(COMMAND "${JAVAC}" -encoding UTF-8 -Xlint:all,-removal,-deprecation --release 11 -d "${CLASSES_DIR}" ${_sources}
  RESULT_VARIABLE _result)
if(_result)
  message(FATAL_ERROR "javac failed")
endif()
execute_process(COMMAND "${JAR}" cf "${OUTPUT}" -C "${CLASSES_DIR}" . RESULT_VARIABLE _result)
if(_result)
  message(FATAL_ERROR "jar failed")
endif()
