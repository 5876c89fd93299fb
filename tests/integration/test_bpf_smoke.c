/* The BPF chain end to end: the skeleton built by lupe_bpf_object loads, attaches a
 * tp_btf program, and sees an exec this test causes. Needs root and BPF; SKIPs without. */
#include "log.h"
#include <linux/types.h>
#include "smoke.h"
#include "smoke.skel.h"
#include "../c/lupe_test.h"

#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

TEST(smoke_skeleton_sees_child_exec)
{
	struct smoke_bpf *skel;
	pid_t child;
	int status, err;

	if (geteuid() != 0)
		SKIP("needs root to load BPF programs");
	lupe_log_attach_libbpf();
	skel = smoke_bpf__open();
	if (!skel)
		FAIL("open: %s", lupe_errstr(errno));
	skel->rodata->parent_tgid = getpid();
	err = smoke_bpf__load(skel);
	if (err == -EPERM || err == -ENOSYS) {
		smoke_bpf__destroy(skel);
		SKIP("BPF unavailable here: %s", lupe_errstr(err));
	}
	if (err) {
		smoke_bpf__destroy(skel);
		FAIL("load: %s", lupe_errstr(err));
	}
	err = smoke_bpf__attach(skel);
	if (err) {
		smoke_bpf__destroy(skel);
		FAIL("attach: %s", lupe_errstr(err));
	}
	child = fork();
	if (child == 0) {
		execl("/bin/true", "true", (char *)NULL);
		_exit(127);
	}
	waitpid(child, &status, 0);
	ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_EQ(skel->bss->seen.count, 1);
	ASSERT_EQ(skel->bss->seen.pid, child);
	smoke_bpf__destroy(skel);
}
