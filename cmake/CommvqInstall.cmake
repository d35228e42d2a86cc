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
configure_file(cmake/commvq.pc.in ${CMAKE_CURRENT_BINARY_DIR}/commvq.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/commvq.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
