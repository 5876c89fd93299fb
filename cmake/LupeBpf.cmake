# lupe_bpf_object(NAME SOURCE [HEADERS...])
# Compiles bpf/NAME.bpf.c with clang -target bpf into NAME.bpf.o, generates the libbpf
# skeleton NAME.skel.h, and exposes both through the INTERFACE target NAME_skel.
find_program(BPF_CLANG clang REQUIRED)
find_program(BPFTOOL bpftool PATHS /usr/sbin /sbin REQUIRED)

set(LUPE_BPF_GEN ${CMAKE_BINARY_DIR}/bpfgen)
set(LUPE_VMLINUX_BTF /sys/kernel/btf/vmlinux CACHE FILEPATH "BTF source for vmlinux.h")
file(MAKE_DIRECTORY ${LUPE_BPF_GEN})

if(NOT EXISTS ${LUPE_VMLINUX_BTF})
  message(FATAL_ERROR "lupe needs kernel BTF (${LUPE_VMLINUX_BTF} is missing): "
    "its BPF programs use CO-RE and tp_btf, which need BTF at run time too. "
    "Use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or point LUPE_VMLINUX_BTF at a BTF file.")
endif()

add_custom_command(
  OUTPUT ${LUPE_BPF_GEN}/vmlinux.h
  COMMAND ${BPFTOOL} btf dump file ${LUPE_VMLINUX_BTF} format c > ${LUPE_BPF_GEN}/vmlinux.h.tmp
  COMMAND ${CMAKE_COMMAND} -E rename ${LUPE_BPF_GEN}/vmlinux.h.tmp ${LUPE_BPF_GEN}/vmlinux.h
  COMMENT "Generating vmlinux.h from ${LUPE_VMLINUX_BTF}"
  VERBATIM)
add_custom_target(lupe_vmlinux_h DEPENDS ${LUPE_BPF_GEN}/vmlinux.h)

if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  set(LUPE_BPF_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
  set(LUPE_BPF_ARCH arm64)
else()
  message(FATAL_ERROR "lupe: unsupported architecture ${CMAKE_SYSTEM_PROCESSOR}")
endif()

function(lupe_bpf_object name src)
  set(obj ${LUPE_BPF_GEN}/${name}.bpf.o)
  set(skel ${LUPE_BPF_GEN}/${name}.skel.h)
  set(deps ${src} ${ARGN})
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${BPF_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_${LUPE_BPF_ARCH}
            -Wall -Wno-unused-function
            -I${LUPE_BPF_GEN} -I${CMAKE_SOURCE_DIR}/bpf
            -c ${CMAKE_CURRENT_SOURCE_DIR}/${src} -o ${obj}
    DEPENDS ${deps}
    COMMENT "BPF ${name}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${skel}
    COMMAND ${BPFTOOL} gen skeleton ${obj} name ${name}_bpf > ${skel}.tmp
    COMMAND ${CMAKE_COMMAND} -E rename ${skel}.tmp ${skel}
    DEPENDS ${obj}
    COMMENT "BPF skeleton ${name}"
    VERBATIM)
  add_custom_target(${name}_skel_gen DEPENDS ${skel})
  # vmlinux.h is generated in the top directory; a target-level dependency orders it.
  add_dependencies(${name}_skel_gen lupe_vmlinux_h)
  add_library(${name}_skel INTERFACE)
  add_dependencies(${name}_skel ${name}_skel_gen)
  target_include_directories(${name}_skel INTERFACE ${LUPE_BPF_GEN} ${CMAKE_SOURCE_DIR}/bpf)
  target_link_libraries(${name}_skel INTERFACE PkgConfig::LIBBPF PkgConfig::LIBELF)
endfunction()
