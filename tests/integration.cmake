# tests/integration.cmake — bash integration and end-to-end tests (included by
# tests/CMakeLists.txt).
#
# Fixture "stack": stack.start brings up an ephemeral PostgreSQL + Redis pair under
# ${CMAKE_BINARY_DIR}/teststack (deploy/stack.sh, no durability) and stack.stop takes it
# down. Every tests/integration/*.sh becomes integration.<name> (label integration) and
# every tests/e2e/*.sh becomes e2e.<name> (label e2e). Each test creates its own database
# and Redis (tests/lib.sh), so they run in parallel (ctest -j).

find_program(CRIER_BASH bash REQUIRED)

set(CRIER_TESTSTACK_DIR ${CMAKE_BINARY_DIR}/teststack)
set(CRIER_STACK_SH ${CMAKE_SOURCE_DIR}/deploy/stack.sh)

add_test(NAME stack.start COMMAND ${CRIER_BASH} ${CRIER_STACK_SH} start ${CRIER_TESTSTACK_DIR})
set_tests_properties(stack.start PROPERTIES
  FIXTURES_SETUP stack
  ENVIRONMENT "CRIER_PG_FAST=1;CRIER_REDIS_FAST=1;CRIER_STACK_FRESH=1"
  LABELS "integration;e2e"
  TIMEOUT 120)

add_test(NAME stack.stop COMMAND ${CRIER_BASH} ${CRIER_STACK_SH} destroy ${CRIER_TESTSTACK_DIR})
set_tests_properties(stack.stop PROPERTIES
  FIXTURES_CLEANUP stack
  LABELS "integration;e2e"
  TIMEOUT 120)

function(crier_add_script_tests kind)
  file(GLOB scripts CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${kind}/*.sh)
  list(SORT scripts)
  foreach(script ${scripts})
    get_filename_component(name ${script} NAME_WE)
    add_test(NAME ${kind}.${name} COMMAND ${CRIER_BASH} ${script})
    set_tests_properties(${kind}.${name} PROPERTIES
      FIXTURES_REQUIRED stack
      LABELS ${kind}
      ENVIRONMENT "CRIER_BIN_DIR=${CMAKE_BINARY_DIR};CRIER_STACK_ENV=${CRIER_TESTSTACK_DIR}/env;CRIER_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
      SKIP_RETURN_CODE 77
      TIMEOUT 300)
  endforeach()
endfunction()

crier_add_script_tests(integration)
crier_add_script_tests(e2e)
