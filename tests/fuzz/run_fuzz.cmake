# cmake -DFUZZER=... -DCORPUS=... -DWORKDIR=... -P run_fuzz.cmake
file(REMOVE_RECURSE ${WORKDIR})
file(MAKE_DIRECTORY ${WORKDIR}/corpus ${WORKDIR}/artifacts)
file(GLOB seeds ${CORPUS}/*)
if(NOT seeds)
  message(FATAL_ERROR "no seeds in ${CORPUS}")
endif()
file(COPY ${seeds} DESTINATION ${WORKDIR}/corpus)
execute_process(
  COMMAND ${FUZZER} -runs=200000 -malloc_limit_mb=64 -rss_limit_mb=2048 -seed=1
          -max_len=8192 -artifact_prefix=${WORKDIR}/artifacts/ ${WORKDIR}/corpus
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "fuzz_decode failed (${rc}); reproducer in ${WORKDIR}/artifacts")
endif()
