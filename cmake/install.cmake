# What `cmake --install` lays out under the prefix:
#   include/mptrain.h
#   lib/libmptrain.so -> libmptrain.so.<ABI> -> libmptrain.so.<version>   (SONAME libmptrain.so.<ABI>)
#   bin/mptrain
#   lib/pkgconfig/mptrain.pc
#   lib/cmake/mptrain/{mptrainConfig,mptrainConfigVersion,mptrainTargets*}.cmake  (mptrain::mptrain)
# Every file refers to the others relative to itself, so `--prefix` may be chosen at install
# time, after the build was configured.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MPT_CMAKE_PACKAGE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/mptrain)
set(MPT_PKGCONFIG_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# Libraries found outside the system's directories at link time (a CUDA toolkit under
# /usr/local/cuda, say) stay findable from the installed library.
set_target_properties(mptrain PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)

install(TARGETS mptrain EXPORT mptrainTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS mptrain_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES include/mptrain.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# --- CMake package: find_package(mptrain) -> mptrain::mptrain -----------------------------
install(EXPORT mptrainTargets NAMESPACE mptrain:: DESTINATION ${MPT_CMAKE_PACKAGE_DIR})
configure_package_config_file(cmake/mptrainConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/mptrainConfig.cmake
                              INSTALL_DESTINATION ${MPT_CMAKE_PACKAGE_DIR}
                              PATH_VARS CMAKE_INSTALL_INCLUDEDIR)
# Before 1.0 a minor release may break the ABI (the header's MAJOR.MINOR check says the same).
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mptrainConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mptrainConfig.cmake ${PROJECT_BINARY_DIR}/mptrainConfigVersion.cmake
        DESTINATION ${MPT_CMAKE_PACKAGE_DIR})

# --- pkg-config: `pkg-config --cflags --libs mptrain` -------------------------------------
# Paths in the .pc file start from its own directory (${pcfiledir}) unless they are absolute.
if(IS_ABSOLUTE "${MPT_PKGCONFIG_DIR}")
  set(MPT_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH MPT_PC_UP "/prefix/${MPT_PKGCONFIG_DIR}" "/prefix")
  string(REGEX REPLACE "/$" "" MPT_PC_UP "${MPT_PC_UP}")
  set(MPT_PC_PREFIX "\${pcfiledir}/${MPT_PC_UP}")
endif()
foreach(kind LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${kind}}")
    set(MPT_PC_${kind} "${CMAKE_INSTALL_${kind}}")
  else()
    set(MPT_PC_${kind} "\${prefix}/${CMAKE_INSTALL_${kind}}")
  endif()
endforeach()
configure_file(cmake/mptrain.pc.in ${PROJECT_BINARY_DIR}/mptrain.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/mptrain.pc DESTINATION ${MPT_PKGCONFIG_DIR})
