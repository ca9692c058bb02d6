# cmake -P script: configures the consumer with -Dpyscheduler_DIR set to what
# `python -m pyscheduler --cmakedir` prints (PYTHONPATH points at the pip --target dir).
execute_process(COMMAND "${PYTHON}" -m pyscheduler --cmakedir
  OUTPUT_VARIABLE cmakedir OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
message(STATUS "python -m pyscheduler --cmakedir: ${cmakedir}")
execute_process(COMMAND "${CMAKE_COMMAND}" -S "${SOURCE}" -B "${BINARY}" -G "${GENERATOR}"
  -DCMAKE_BUILD_TYPE=Release "-Dpyscheduler_DIR=${cmakedir}" "-DPython_EXECUTABLE=${PYTHON}"
  "-Dpybind11_DIR=${pybind11_DIR}"
  COMMAND_ERROR_IS_FATAL ANY)
