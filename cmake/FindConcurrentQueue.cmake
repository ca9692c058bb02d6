# FindConcurrentQueue
# -------------------
# Finds the header-only moodycamel::ConcurrentQueue (Debian/Ubuntu package
# libconcurrentqueue-dev installs it as <concurrentqueue/concurrentqueue.h> and
# ships no CMake config of its own).
#
# Defines the imported target concurrentqueue::concurrentqueue whose include
# directory makes both <concurrentqueue/blockingconcurrentqueue.h> and
# <blockingconcurrentqueue.h> resolve.
#
# Hints: ConcurrentQueue_ROOT, or CMAKE_PREFIX_PATH.

find_path(ConcurrentQueue_INCLUDE_DIR
  NAMES concurrentqueue/blockingconcurrentqueue.h
  PATH_SUFFIXES include)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(ConcurrentQueue
  REQUIRED_VARS ConcurrentQueue_INCLUDE_DIR)

if(ConcurrentQueue_FOUND AND NOT TARGET concurrentqueue::concurrentqueue)
  add_library(concurrentqueue::concurrentqueue INTERFACE IMPORTED)
  set_target_properties(concurrentqueue::concurrentqueue PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${ConcurrentQueue_INCLUDE_DIR}")
endif()
mark_as_advanced(ConcurrentQueue_INCLUDE_DIR)
