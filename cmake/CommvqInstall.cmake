# Install rules, the CMake package config (find_package(commvq)) and commvq.pc.
include(CMakePackageConfigHelpers)

install(TARGETS commvq commvq_static EXPORT commvqTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/commvq DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

install(EXPORT commvqTargets NAMESPACE commvq::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/commvq)
configure_package_config_file(cmake/commvqConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/commvqConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/commvq)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/commvqConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/commvqConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/commvqConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/commvq)

# The .pc file finds its prefix relative to itself, so an installed tree can move.
file(RELATIVE_PATH COMMVQ_PC_TO_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)

# What a C program linking libcommvq.a needs besides it: the C++ runtime,
# i.e. what the C++ compiler links and the C compiler does not (stdc++ and m
# with GCC, c++ with libc++), and threads. CMake links a C target with the
# C compiler even against an imported C++ archive unless the consumer enables
# C++, so the runtime is part of commvq::commvq_static's link interface, and
# of Libs.private for `pkg-config --static`.
set(_cxx_runtime "")
foreach(_lib IN LISTS CMAKE_CXX_IMPLICIT_LINK_LIBRARIES)
  if(NOT _lib IN_LIST CMAKE_C_IMPLICIT_LINK_LIBRARIES)
    list(APPEND _cxx_runtime "${_lib}")
  endif()
endforeach()
list(APPEND _cxx_runtime m)
list(REMOVE_DUPLICATES _cxx_runtime)
target_link_libraries(commvq_static INTERFACE ${_cxx_runtime})

set(_pc_private "")
foreach(_lib IN LISTS _cxx_runtime)
  if(IS_ABSOLUTE "${_lib}")
    list(APPEND _pc_private "${_lib}")
  else()
    list(APPEND _pc_private "-l${_lib}")
  endif()
endforeach()
list(APPEND _pc_private -lpthread)
# With CUDA: the runtime, static as the library links it (with its dl and
# rt), and cuBLAS.
if(COMMVQ_HAVE_CUDA)
  list(APPEND _pc_private "-L${CUDAToolkit_LIBRARY_DIR}" -lcudart_static -lcublas -ldl -lrt)
endif()
list(JOIN _pc_private " " COMMVQ_PC_LIBS_PRIVATE)
configure_file(cmake/commvq.pc.in ${CMAKE_CURRENT_BINARY_DIR}/commvq.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/commvq.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The Python package (pure Python; it finds LIBDIR/libcommvq.so.0 of the same
# prefix): PYTHONPATH=PREFIX/LIBDIR/python3/site-packages, or use the wheel.
install(DIRECTORY ${CMAKE_SOURCE_DIR}/bindings/python/commvq
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/python3/site-packages PATTERN __pycache__ EXCLUDE)
