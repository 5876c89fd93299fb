/* Shared with runtime/: the smallest program that proves the BPF chain (build, skeleton,
 * load, attach, read back). */
#ifndef LUPE_BPF_SMOKE_H
#define LUPE_BPF_SMOKE_H

struct lupe_smoke_exec {
	__u32 pid;
	__u32 count;
};

#endif
