// SPDX-License-Identifier: GPL-2.0
/* Counts execs of processes whose parent is the loader's chosen pid: the integration test
 * execs a child and reads the count and pid back through the skeleton's .bss. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "smoke.h"

const volatile __u32 parent_tgid = 0;

struct lupe_smoke_exec seen;

SEC("tp_btf/sched_process_exec")
int BPF_PROG(smoke_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (BPF_CORE_READ(p, real_parent, tgid) != parent_tgid)
		return 0;
	seen.pid = BPF_CORE_READ(p, tgid);
	__sync_fetch_and_add(&seen.count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
