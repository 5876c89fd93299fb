/* APM correlation at sample time: the IDs of the transaction the sampled thread is in.
 * Include after vmlinux.h, bpf_helpers.h and bpf_core_read.h; see apm.h for the layouts. */
#ifndef LUPE_APM_BPF_H
#define LUPE_APM_BPF_H

#include "apm.h"

/* vmlinux.h carries no errno macros. */
#define LUPE_APM_ENOENT 2
#define LUPE_APM_EFAULT 14
#define LUPE_APM_ENODATA 61
#define LUPE_APM_ENOTSUP 95

/* The thread pointer user space set for task, as the kernel saved it. A task running
 * right now has it in the register, but the saved copy is the same for threads set up by
 * clone(CLONE_SETTLS) or arch_prctl, which is how C libraries do it. */
static __always_inline __u64 lupe_apm_thread_pointer(struct task_struct *task)
{
#if defined(__TARGET_ARCH_x86)
	return BPF_CORE_READ(task, thread.fsbase);
#elif defined(__TARGET_ARCH_arm64)
	return BPF_CORE_READ(task, thread.uw.tp_value);
#else
	return 0;
#endif
}

/* Reads task's correlation buffer: *(thread pointer + tls_offset) points to it. Returns 0
 * with out filled when the thread is inside a transaction; -ENOENT when the thread has no
 * buffer (no thread pointer, or a NULL pointer: a thread the agent never saw); -ENODATA
 * when the buffer is not valid (being rewritten) or holds no trace; -EFAULT when user
 * memory could not be read (paged out: no faults in this context); -ENOTSUP on an
 * architecture without a known thread pointer. Neither ID is checked for zero: user space
 * sends only non-zero transactions. */
static __always_inline int lupe_apm_read(struct task_struct *task, __s64 tls_offset,
					 struct lupe_apm_ids *out)
{
	struct lupe_apm_corr_buf buf;
	__u64 tp, bufp = 0;

#if !defined(__TARGET_ARCH_x86) && !defined(__TARGET_ARCH_arm64)
	return -LUPE_APM_ENOTSUP;
#endif
	tp = lupe_apm_thread_pointer(task);
	if (!tp)
		return -LUPE_APM_ENOENT;
	if (bpf_probe_read_user(&bufp, sizeof(bufp), (const void *)(tp + tls_offset)))
		return -LUPE_APM_EFAULT;
	if (!bufp)
		return -LUPE_APM_ENOENT;
	if (bpf_probe_read_user(&buf, sizeof(buf), (const void *)bufp))
		return -LUPE_APM_EFAULT;
	if (!buf.valid || !buf.trace_present)
		return -LUPE_APM_ENODATA;
	__builtin_memcpy(out->trace_id, buf.trace_id, sizeof(out->trace_id));
	__builtin_memcpy(out->tx_id, buf.tx_id, sizeof(out->tx_id));
	return 0;
}

#endif
