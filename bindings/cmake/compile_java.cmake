# cmake -P compile_java.cmake: compiles the SWIG-generated and hand-written
# Java sources into a jar. Run at build time because SWIG decides which
# generated files exist (one per struct of the header).
#   -DJAVAC=... -DJAR=... -DGENERATED_DIR=... -DSOURCE_DIR=... -DCLASSES_DIR=... -DOUTPUT=commvq.jar
#   [-DNATIVE_DIR=org/commvq/native/linux-amd64 -DNATIVE_LIBS="libcommvq_java.so|libcommvq.so.0.4.0"]
#   [-DPOM=pom.xml -DVERSION=0.4.0]
# NATIVE_LIBS go into the jar under NATIVE_DIR (a versioned libcommvq.so.X.Y.Z
# as its soname, libcommvq.so.X), where NativeLoader finds them; POM goes to
# META-INF/maven/org.commvq/commvq/ as Maven itself would put it.
file(GLOB_RECURSE _sources "${GENERATED_DIR}/*.java" "${SOURCE_DIR}/*.java")
file(REMOVE_RECURSE "${CLASSES_DIR}")
file(MAKE_DIRECTORY "${CLASSES_DIR}")
execute_process(COMMAND "${JAVAC}" -encoding UTF-8 -Xlint:all,-removal,-deprecation --release 11 -d "${CLASSES_DIR}" ${_sources}
  RESULT_VARIABLE _result)
if(_result)
  message(FATAL_ERROR "javac failed")
endif()
string(REPLACE "|" ";" NATIVE_LIBS "${NATIVE_LIBS}")
foreach(_lib IN LISTS NATIVE_LIBS)
  get_filename_component(_name "${_lib}" NAME)
  string(REGEX REPLACE "^(libcommvq\\.so\\.[0-9]+)\\..*$" "\\1" _name "${_name}")
  file(MAKE_DIRECTORY "${CLASSES_DIR}/${NATIVE_DIR}")
  file(COPY_FILE "${_lib}" "${CLASSES_DIR}/${NATIVE_DIR}/${_name}")
endforeach()
if(POM)
  set(_maven "${CLASSES_DIR}/META-INF/maven/org.commvq/commvq")
  file(MAKE_DIRECTORY "${_maven}")
  file(COPY_FILE "${POM}" "${_maven}/pom.xml")
  file(WRITE "${_maven}/pom.properties" "groupId=org.commvq\nartifactId=commvq\nversion=${VERSION}\n")
endif()
execute_process(COMMAND "${JAR}" cf "${OUTPUT}" -C "${CLASSES_DIR}" . RESULT_VARIABLE _result)
if(_result)
  message(FATAL_ERROR "jar failed")
endif()
