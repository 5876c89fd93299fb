/* runtime/apm: APM correlation. The message against a hand-written vector; detection of a
 * fixture agent library (tests/fixtures/apm, compiled here) against readelf; attaching to
 * running fixture processes, whose own logs are the oracle (the TLS offset the compiler's
 * code uses, the messages their socket received); hostile socket paths; a full socket.
 * The session's side (offline, fed by ingest): samples in different transactions are
 * notified separately, with the counts and the trace hash the session reports.
 * Tests that run fixtures as another user, in a chroot or in another mount namespace need
 * root and SKIP without it. */
#include "apm.h"
#include "procmgr.h"
#include "session.h"
#include "lupe_test.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <linux/openat2.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------ */

static char work[PATH_MAX]; /* temp dir shared by all tests, removed at exit */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void cleanup(void)
{
	if (work[0])
		nftw(work, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *fixtures(void)
{
	const char *f = getenv("LUPE_FIXTURES");

	return f ? f : "tests/fixtures";
}

static const char *workdir(void)
{
	if (!work[0]) {
		snprintf(work, sizeof(work), "/tmp/lupe-test-apm.XXXXXX");
		if (!mkdtemp(work)) {
			work[0] = '\0';
			return NULL;
		}
		/* Fixtures run as nobody must reach their binaries. */
		chmod(work, 0755);
		atexit(cleanup);
	}
	return work;
}

static char *wpath(char *buf, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(buf, PATH_MAX, "%s/", work);

	va_start(ap, fmt);
	vsnprintf(buf + n, PATH_MAX - n, fmt, ap);
	va_end(ap);
	return buf;
}

/* The first line of a command's output, without its newline ("" if none). */
static int capture_line(char *out, size_t len, const char *fmt, ...)
{
	char cmd[4 * PATH_MAX];
	va_list ap;
	FILE *p;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	out[0] = '\0';
	p = popen(cmd, "r");
	if (!p)
		return -1;
	if (fgets(out, (int)len, p))
		out[strcspn(out, "\n")] = '\0';
	return pclose(p) == 0 ? 0 : -1;
}

static bool is_root(void)
{
	return geteuid() == 0;
}

/* Builds the fixtures once: bin/ holds the agent library and the app (which finds the
 * library beside itself); gnu/ the library with the traditional TLS dialect (no TLSDESC);
 * badsize/ one whose storage symbol has 4 bytes; bin/libagent.so the good one renamed. */
static bool built, build_ok;

static bool build(void)
{
	const char *fx = fixtures(), *w = workdir();
	const char *lib = "elastic-jvmti-linux-x86_64.so";

	if (built)
		return build_ok;
	built = true;
	if (!w)
		return false;
	build_ok =
		!lupe_test_run("mkdir -p %s/bin %s/gnu %s/badsize %s/run && chmod 755 %s/bin && "
		     "chmod 1777 %s/run", w, w, w, w, w, w) &&
		!lupe_test_run("cc -O1 -fPIC -mtls-dialect=gnu2 -shared -Wl,-soname,%s -o %s/bin/%s "
		     "%s/apm/agent.c", lib, w, lib, fx) &&
		!lupe_test_run("cc -O1 -pthread -o %s/bin/app %s/apm/app.c %s/bin/%s -Wl,-rpath,'$ORIGIN'",
		     w, fx, w, lib) &&
		!lupe_test_run("cc -O1 -fPIC -mtls-dialect=gnu -shared -o %s/gnu/%s %s/apm/agent.c", w, lib,
		     fx) &&
		!lupe_test_run("cc -O1 -fPIC -mtls-dialect=gnu2 -shared -DAGENT_BAD_STORAGE_SIZE "
		     "-o %s/badsize/%s %s/apm/agent.c", w, lib, fx) &&
		!lupe_test_run("cp %s/bin/%s %s/bin/libagent.so", w, lib, w);
	return build_ok;
}

#define NEED_FIXTURES()                                                      \
	do {                                                                 \
		if (!build())                                                \
			SKIP("cannot build the fixtures (cc with -mtls-dialect=gnu2?)"); \
	} while (0)

/* A running fixture app. */
struct app {
	pid_t pid;
	char log[PATH_MAX];
	long tls_offset;
};

/* Waits until the app's log has a line starting with prefix; copies it. */
static bool wait_line(const char *log, const char *prefix, char *line, size_t len, int ms)
{
	char buf[512];
	int i;

	for (i = 0; i < ms / 5; i++) {
		FILE *f = fopen(log, "r");

		if (f) {
			while (fgets(buf, sizeof(buf), f))
				if (!strncmp(buf, prefix, strlen(prefix))) {
					fclose(f);
					if (line)
						snprintf(line, len, "%s", buf);
					return true;
				}
			fclose(f);
		}
		usleep(5000);
	}
	return false;
}

/* Counts the log lines starting with prefix. */
static int count_lines(const char *log, const char *prefix)
{
	char buf[512];
	int n = 0;
	FILE *f = fopen(log, "r");

	if (!f)
		return 0;
	while (fgets(buf, sizeof(buf), f))
		n += !strncmp(buf, prefix, strlen(prefix));
	fclose(f);
	return n;
}

/* Starts argv (NULL-terminated) with the app's log at log; waits for its "ready" line
 * unless wait_ready is false. Returns 0 or -1. */
static int app_start(struct app *a, const char *log, bool wait_ready, char *const argv[])
{
	char line[512];
	pid_t pid;

	memset(a, 0, sizeof(*a));
	snprintf(a->log, sizeof(a->log), "%s", log);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		dup2(null, 1);
		execvp(argv[0], argv);
		_exit(127);
	}
	a->pid = pid;
	if (!wait_ready)
		return 0;
	if (!wait_line(log, "ready ", line, sizeof(line), 5000)) {
		printf("    app did not get ready (log %s)\n", log);
		return -1;
	}
	if (sscanf(line, "ready pid=%*d tls_offset=%ld", &a->tls_offset) != 1)
		return -1;
	return 0;
}

static void app_stop(struct app *a)
{
	if (a->pid > 0) {
		kill(a->pid, SIGKILL);
		waitpid(a->pid, NULL, 0);
	}
	a->pid = 0;
}

/* The plain app: bin/app --log LOG --socket SOCK [extra...]. */
static int app_run(struct app *a, const char *tag, const char *sock, bool wait_ready,
		   const char *x1, const char *x2, const char *x3)
{
	char app[PATH_MAX], log[PATH_MAX];
	char *argv[12];
	int i = 0;

	wpath(app, "bin/app");
	wpath(log, "run/%s.log", tag);
	unlink(log);
	argv[i++] = app;
	argv[i++] = "--log";
	argv[i++] = log;
	argv[i++] = "--socket";
	argv[i++] = (char *)sock;
	if (x1)
		argv[i++] = (char *)x1;
	if (x2)
		argv[i++] = (char *)x2;
	if (x3)
		argv[i++] = (char *)x3;
	argv[i] = NULL;
	return app_start(a, log, wait_ready, argv);
}

/* A datagram socket bound at path by this test (a decoy, or a target's socket made by
 * someone else). Returns the fd or -1. */
static int bind_dgram(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	unlink(path);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* Whether fd has a datagram waiting. */
/* Whether this kernel (or valgrind, which lacks it up to 3.19) runs openat2: without it
 * lupe_apm resolves by the walk whatever it is asked, so only the walk can be checked. */
static bool have_openat2(void)
{
	static int have = -1;
	struct open_how how = { .flags = O_PATH | O_CLOEXEC };
	long fd;

	if (have < 0) {
		fd = syscall(SYS_openat2, AT_FDCWD, "/", &how, sizeof(how));
		have = !(fd < 0 && errno == ENOSYS);
		if (fd >= 0)
			close((int)fd);
		if (!have)
			printf("    openat2 is missing here: only the component walk is checked\n");
	}
	return have;
}

static bool has_datagram(int fd)
{
	char b[64];

	return recv(fd, b, sizeof(b), MSG_DONTWAIT) >= 0;
}

static void hex(char *out, const uint8_t *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

/* Records opts.attached / opts.detached calls. */
struct bpf_log {
	int attached, detached;
	pid_t pid;
	int64_t tls_offset;
};

static int on_attached(void *ctx, pid_t pid, int64_t off)
{
	struct bpf_log *l = ctx;

	l->attached++;
	l->pid = pid;
	l->tls_offset = off;
	return 0;
}

static void on_detached(void *ctx, pid_t pid)
{
	struct bpf_log *l = ctx;

	l->detached++;
	l->pid = pid;
}

static struct lupe_apm *new_apm(struct bpf_log *bl, bool no_openat2)
{
	LUPE_OPTS(lupe_apm_opts, opts, .attached = on_attached, .detached = on_detached,
		  .ctx = bl, .no_openat2 = no_openat2);

	memset(bl, 0, sizeof(*bl));
	return lupe_apm__new(&opts);
}

static const struct lupe_apm_ids test_ids = {
	.trace_id = { 0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
		      0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36 },
	.tx_id = { 0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7 },
};

/* ---- pure helpers ------------------------------------------------------------------- */

TEST(encode_matches_hand_vector)
{
	struct lupe_apm_ids ids;
	uint8_t msg[LUPE_APM_MSG_LEN];
	/* Written out by hand from the layout: LE u16 type 1, LE u16 minor 1, trace ID,
	 * transaction ID, the hash big-endian hi then lo, LE u16 count 0x0203. */
	static const uint8_t want[LUPE_APM_MSG_LEN] = {
		0x01, 0x00, 0x01, 0x00,
		0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
		0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
		0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
		0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
		0x03, 0x02,
	};
	int i;

	for (i = 0; i < 16; i++)
		ids.trace_id[i] = (uint8_t)i;
	for (i = 0; i < 8; i++)
		ids.tx_id[i] = (uint8_t)(0xa0 + i);
	memset(msg, 0xee, sizeof(msg));
	lupe_apm_encode(msg, &ids, (struct lupe_file_id){ 0x0102030405060708ull,
							  0x1112131415161718ull }, 0x0203);
	for (i = 0; i < LUPE_APM_MSG_LEN; i++)
		if (msg[i] != want[i])
			FAIL("byte %d: %#x, want %#x", i, msg[i], want[i]);
	ASSERT_EQ(sizeof(struct lupe_apm_corr_buf), 37);
	ASSERT_EQ(sizeof(struct lupe_apm_ids), 24);
}

TEST(path_matching)
{
	static const struct { const char *path; bool match; } cases[] = {
		{ "/opt/elastic/elastic-jvmti-linux-x86_64.so", true },
		{ "/tmp/x/elastic-jvmti-linux-arm64.so", true },
		{ "/elastic-jvmti-linux-.so", true },
		{ "/a/elastic-jvmti-linux-x86_64-v2_b.so", true },
		{ "elastic-jvmti-linux-x86_64.so", false },   /* the pattern needs a directory */
		{ "/a/elastic-jvmti-linux-x86_64.so.1", false },
		{ "/a/elastic-jvmti-linux-x86.64.so", false },
		{ "/a/libelastic-jvmti-linux-x86_64.so", false },
		{ "/a/elastic-jvmti-linux-x86 64.so", false },
		{ "/elastic-jvmti-linux-x86_64.so/", false },
		{ "/a/elastic-jvmti-linux.so", false },
		{ "", false },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		if (lupe_apm_path_matches(cases[i].path) != cases[i].match)
			FAIL("'%s': expected %s", cases[i].path, cases[i].match ? "match" : "no match");
	ASSERT(!lupe_apm_path_matches(NULL));
}

/* Appends a u32-length-prefixed string (host order, as the agent writes it). */
static size_t put(uint8_t *b, size_t off, uint32_t len, const char *s)
{
	memcpy(b + off, &len, 4);
	memcpy(b + off + 4, s, strlen(s));
	return off + 4 + strlen(s);
}

TEST(parse_storage_vectors)
{
	uint8_t b[2048];
	struct lupe_apm_storage s;
	char big[1100];
	uint16_t minor = 3;
	size_t n;

	memcpy(b, &minor, 2);
	n = put(b, 2, 3, "svc");
	n = put(b, n, 4, "prod");
	n = put(b, n, 9, "/run/x.so");
	ASSERT_OK(lupe_apm_parse_storage(b, n, &s));
	ASSERT_EQ(s.minor, 3);
	ASSERT_STREQ(s.service, "svc");
	ASSERT_STREQ(s.env, "prod");
	ASSERT_STREQ(s.socket, "/run/x.so");
	/* Trailing bytes are not ours to judge. */
	ASSERT_OK(lupe_apm_parse_storage(b, n + 100, &s));
	/* Every truncation point. */
	for (size_t cut = 0; cut < n; cut++)
		if (lupe_apm_parse_storage(b, cut, &s) != -ENODATA)
			FAIL("cut at %zu: not -ENODATA", cut);
	/* Empty strings are fine. */
	n = put(b, 2, 0, "");
	n = put(b, n, 0, "");
	n = put(b, n, 0, "");
	ASSERT_OK(lupe_apm_parse_storage(b, n, &s));
	ASSERT_STREQ(s.service, "");
	/* Limits: 128, 128, 1024 pass; one more fails, whatever follows. */
	memset(big, 'a', sizeof(big));
	big[1024] = '\0';
	big[128] = '\0';
	n = put(b, 2, 128, big);
	n = put(b, n, 128, big);
	big[128] = 'a';
	big[1024] = '\0';
	n = put(b, n, 1024, big);
	ASSERT_OK(lupe_apm_parse_storage(b, n, &s));
	ASSERT_EQ(strlen(s.socket), 1024);
	big[129] = '\0';
	n = put(b, 2, 129, big);
	ASSERT_EQ(lupe_apm_parse_storage(b, sizeof(b), &s), -EINVAL);
	n = put(b, 2, 1, "x");
	n = put(b, n, 129, big);
	ASSERT_EQ(lupe_apm_parse_storage(b, sizeof(b), &s), -EINVAL);
	n = put(b, 2, 1, "x");
	n = put(b, n, 1, "y");
	big[1024] = 'a';
	big[1025] = '\0';
	n = put(b, n, 1025, big);
	ASSERT_EQ(lupe_apm_parse_storage(b, sizeof(b), &s), -EINVAL);
	/* A huge length must not wrap anything. */
	n = put(b, 2, 0xffffffffu, "");
	ASSERT_EQ(lupe_apm_parse_storage(b, sizeof(b), &s), -EINVAL);
	/* NUL and control bytes inside a string. */
	n = put(b, 2, 3, "a\0b");
	memcpy(b + 6, "a\0b", 3);
	n = put(b, 9, 0, "");
	n = put(b, n, 0, "");
	ASSERT_EQ(lupe_apm_parse_storage(b, n, &s), -EINVAL);
	n = put(b, 2, 3, "a\nb");
	n = put(b, n, 0, "");
	n = put(b, n, 0, "");
	ASSERT_EQ(lupe_apm_parse_storage(b, n, &s), -EINVAL);
	ASSERT_STREQ(s.service, ""); /* zeroed on error */
	ASSERT_EQ(lupe_apm_parse_storage(b, 1, &s), -ENODATA);
}

/* ---- detection ---------------------------------------------------------------------- */

TEST(detect_fixture_against_readelf)
{
	char lib[PATH_MAX], line[256];
	unsigned long long want_storage, want_desc, size;
	struct lupe_apm_lib l;
	int fd;

#ifndef __x86_64__
	SKIP("the fixture's relocation is checked for x86-64 only");
#endif
	NEED_FIXTURES();
	wpath(lib, "bin/elastic-jvmti-linux-x86_64.so");
	ASSERT_OK(capture_line(line, sizeof(line),
			       "readelf -W --dyn-syms '%s' | awk '$8 == "
			       "\"elastic_apm_profiling_correlation_process_storage_v1\" "
			       "{ print $2, $3; exit }'", lib));
	ASSERT_EQ(sscanf(line, "%llx %llu", &want_storage, &size), 2);
	ASSERT_EQ(size, 8);
	ASSERT_OK(capture_line(line, sizeof(line),
			       "readelf -rW '%s' | awk '$3 == \"R_X86_64_TLSDESC\" && $5 == "
			       "\"elastic_apm_profiling_correlation_tls_v1\" { print $1; exit }'",
			       lib));
	ASSERT_EQ(sscanf(line, "%llx", &want_desc), 1);

	ASSERT_OK(lupe_apm_detect(-1, lib, &l));
	ASSERT_EQ(l.machine, EM_X86_64);
	ASSERT_EQ(l.storage_vaddr, want_storage);
	ASSERT_EQ(l.tlsdesc_vaddr, want_desc);
	/* Through an open descriptor, whose offset stays where it was. */
	fd = open(lib, O_RDONLY);
	ASSERT(fd >= 0);
	lseek(fd, 123, SEEK_SET);
	memset(&l, 0, sizeof(l));
	ASSERT_OK(lupe_apm_detect(fd, lib, &l));
	ASSERT_EQ(lseek(fd, 0, SEEK_CUR), 123);
	close(fd);
	ASSERT_EQ(l.tlsdesc_vaddr, want_desc);
}

TEST(detect_rejects_impostors)
{
	char p[PATH_MAX], line[64];
	struct lupe_apm_lib l;
	int fd;

	NEED_FIXTURES();
	/* The traditional dialect has no TLSDESC relocation (readelf agrees). */
	wpath(p, "gnu/elastic-jvmti-linux-x86_64.so");
	capture_line(line, sizeof(line), "readelf -rW '%s' | grep -c TLSDESC", p);
	ASSERT_STREQ(line, "0");
	ASSERT_EQ(lupe_apm_detect(-1, p, &l), -ENOTSUP);
	ASSERT_EQ(l.storage_vaddr, 0);
	/* A 4-byte storage symbol. */
	ASSERT_EQ(lupe_apm_detect(-1, wpath(p, "badsize/elastic-jvmti-linux-x86_64.so"), &l),
		  -ENOTSUP);
	/* The right library under another name: nothing is even read. */
	ASSERT_EQ(lupe_apm_detect(-1, wpath(p, "bin/libagent.so"), &l), -ENOENT);
	ASSERT_EQ(lupe_apm_detect(-1, "/nonexistent/libagent.so", &l), -ENOENT);
	/* Named right but not ELF, or missing, or an ELF file without the symbols. */
	wpath(p, "run/elastic-jvmti-linux-text.so");
	ASSERT_OK(lupe_test_run("echo 'not an ELF file' > '%s'", p));
	ASSERT_EQ(lupe_apm_detect(-1, p, &l), -ENOEXEC);
	wpath(p, "run/elastic-jvmti-linux-missing.so");
	ASSERT_EQ(lupe_apm_detect(-1, p, &l), -ENOENT);
	wpath(p, "run/elastic-jvmti-linux-app.so");
	ASSERT_OK(lupe_test_run("cp %s/bin/app '%s'", work, p));
	ASSERT_EQ(lupe_apm_detect(-1, p, &l), -ENOTSUP);
	/* Truncated copies of the good library never crash; they are refused or, cut after
	 * every byte the detection reads, accepted. */
	for (int cut = 0; cut < 20000; cut += 333) {
		int err;

		wpath(p, "run/cut/elastic-jvmti-linux-x86_64.so");
		ASSERT_OK(lupe_test_run("mkdir -p %s/run/cut && head -c %d %s/bin/elastic-jvmti-linux-x86_64.so"
			      " > '%s'", work, cut, work, p));
		err = lupe_apm_detect(-1, p, &l);
		if (err != 0 && err != -ENOEXEC && err != -EINVAL && err != -ENOTSUP)
			FAIL("cut at %d: unexpected %d", cut, err);
	}
	/* A FIFO named like the library: refused without blocking. */
	wpath(p, "run/fifo/elastic-jvmti-linux-x86_64.so");
	ASSERT_OK(lupe_test_run("mkdir -p %s/run/fifo && mkfifo '%s'", work, p));
	fd = lupe_apm_detect(-1, p, &l);
	ASSERT(fd == -ENOEXEC || fd == -EINVAL);
}

/* ---- attaching to a running agent --------------------------------------------------- */

TEST(attach_reads_storage_and_tls_offset)
{
	struct lupe_apm_agent_info info;
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	char sock[PATH_MAX];

	NEED_FIXTURES();
	apm = new_apm(&bl, false);
	ASSERT(apm);
	wpath(sock, "run/attach.sock");
	if (app_run(&a, "attach", sock, true, "--bind", "--threads", "2")) {
		app_stop(&a);
		lupe_apm__free(apm);
		FAIL("fixture app did not start");
	}
	ASSERT_OK(lupe_apm__scan(apm, a.pid));
	ASSERT_OK(lupe_apm__agent_info(apm, a.pid, &info));
	ASSERT(info.attached);
	ASSERT_STREQ(info.storage.service, "lupe-test-svc");
	ASSERT_STREQ(info.storage.env, "test");
	ASSERT_STREQ(info.storage.socket, sock);
	ASSERT_EQ(info.storage.minor, 1);
	/* The offset the agent's own code uses, logged by the fixture. */
	ASSERT_EQ(info.tls_offset, a.tls_offset);
	ASSERT(info.socket_open);
	ASSERT_EQ(info.socket_err, 0);
	ASSERT_EQ(bl.attached, 1);
	ASSERT_EQ(bl.pid, a.pid);
	ASSERT_EQ(bl.tls_offset, a.tls_offset);
	ASSERT_STREQ(lupe_apm__service(apm, a.pid), "lupe-test-svc");
	/* Attaching again changes nothing and tells BPF nothing new. */
	ASSERT_OK(lupe_apm__scan(apm, a.pid));
	ASSERT_EQ(bl.attached, 1);
	lupe_apm__stats(apm, &st);
	ASSERT_EQ(st.agents_found, 1);
	ASSERT_EQ(st.agents, 1);
	ASSERT_EQ(st.pending, 0);
	ASSERT_EQ(st.rejected_paths, 0);
	ASSERT_EQ(st.services, 1);
	lupe_apm__pid_exit(apm, a.pid);
	ASSERT_EQ(bl.detached, 1);
	ASSERT_EQ(lupe_apm__agent_info(apm, a.pid, &info), -ENOENT);
	ASSERT(lupe_apm__service(apm, a.pid) == NULL);
	app_stop(&a);
	lupe_apm__free(apm);
}

TEST(real_send_is_received_and_decoded)
{
	struct lupe_file_id hash = { 0x0123456789abcdefull, 0xfedcba9876543210ull };
	struct lupe_apm_ids zero_tx = test_ids;
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	char sock[PATH_MAX], want[256], th[33], tx[17];
	const char *svc, *svc2;
	pid_t pid;

	NEED_FIXTURES();
	apm = new_apm(&bl, false);
	ASSERT(apm);
	wpath(sock, "run/send.sock");
	if (app_run(&a, "send", sock, true, "--bind", NULL, NULL)) {
		app_stop(&a);
		lupe_apm__free(apm);
		FAIL("fixture app did not start");
	}
	ASSERT_OK(lupe_apm__scan(apm, a.pid));
	svc = lupe_apm__notify(apm, a.pid, &test_ids, hash, 7);
	ASSERT_STREQ(svc, "lupe-test-svc");
	hex(th, test_ids.trace_id, 16);
	hex(tx, test_ids.tx_id, 8);
	snprintf(want, sizeof(want),
		 "msg len=46 type=1 minor=1 trace=%s tx=%s stack=0123456789abcdeffedcba9876543210 "
		 "count=7\n", th, tx);
	{
		char line[512];

		if (!wait_line(a.log, "msg ", line, sizeof(line), 3000)) {
			app_stop(&a);
			lupe_apm__free(apm);
			FAIL("the agent logged no message");
		}
		ASSERT_STREQ(line, want);
	}
	/* No transaction: nothing sent, the service still labels. */
	memset(zero_tx.tx_id, 0, sizeof(zero_tx.tx_id));
	svc2 = lupe_apm__notify(apm, a.pid, &zero_tx, hash, 3);
	ASSERT(svc2 == svc); /* the same interned pointer */
	/* Over 16 bits: split, the counts add up. */
	lupe_apm__notify(apm, a.pid, &test_ids, hash, 70000);
	lupe_apm__notify(apm, a.pid, &test_ids, hash, 0);
	ASSERT(wait_line(a.log, "msg len=46 type=1 minor=1 trace", NULL, 0, 100));
	for (int i = 0; i < 300 && count_lines(a.log, "msg ") < 3; i++)
		usleep(10000);
	ASSERT_EQ(count_lines(a.log, "msg "), 3);
	snprintf(want, sizeof(want), "msg len=46 type=1 minor=1 trace=%s tx=%s "
		 "stack=0123456789abcdeffedcba9876543210 count=65535", th, tx);
	ASSERT(wait_line(a.log, want, NULL, 0, 100));
	snprintf(want, sizeof(want), "msg len=46 type=1 minor=1 trace=%s tx=%s "
		 "stack=0123456789abcdeffedcba9876543210 count=4465", th, tx);
	ASSERT(wait_line(a.log, want, NULL, 0, 100));
	lupe_apm__stats(apm, &st);
	ASSERT_EQ(st.sent, 3);
	ASSERT_EQ(st.no_transaction, 1);
	ASSERT_EQ(st.dropped, 0);
	ASSERT_EQ(st.errors, 0);
	/* In samples: 7 + 70000 sent, 3 without a transaction. */
	ASSERT_EQ(st.sent_samples, 70007);
	ASSERT_EQ(st.no_transaction_samples, 3);
	ASSERT_EQ(st.dropped_samples + st.error_samples + st.no_socket_samples, 0);
	/* A pid without an agent: nothing, NULL. */
	ASSERT(lupe_apm__notify(apm, getpid(), &test_ids, hash, 1) == NULL);
	pid = a.pid;
	app_stop(&a);
	/* The agent is gone: the send fails, counted, never blocking. */
	lupe_apm__notify(apm, pid, &test_ids, hash, 1);
	lupe_apm__stats(apm, &st);
	ASSERT_EQ(st.sent + st.errors + st.dropped, 4);
	ASSERT_EQ(st.errors, 1);
	ASSERT_EQ(st.error_samples, 1);
	lupe_apm__free(apm);
}

static void watchdog(int sig)
{
	static const char m[] = "    FAIL: a send blocked (watchdog)\n";

	(void)!write(1, m, sizeof(m) - 1);
	_exit(1);
}

TEST(full_socket_drops_without_blocking)
{
	struct lupe_file_id hash = { 1, 2 };
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	char sock[PATH_MAX];
	int i;

	NEED_FIXTURES();
	apm = new_apm(&bl, false);
	ASSERT(apm);
	wpath(sock, "run/full.sock");
	if (app_run(&a, "full", sock, true, "--bind", "--no-recv", NULL)) {
		app_stop(&a);
		lupe_apm__free(apm);
		FAIL("fixture app did not start");
	}
	ASSERT_OK(lupe_apm__scan(apm, a.pid));
	signal(SIGALRM, watchdog);
	alarm(20);
	for (i = 0; i < 2000; i++)
		lupe_apm__notify(apm, a.pid, &test_ids, hash, 1 + i % 3);
	alarm(0);
	lupe_apm__stats(apm, &st);
	ASSERT_EQ(st.sent + st.dropped, 2000);
	/* Sum of 1 + i % 3 over i < 2000: 667 * 1 + 667 * 2 + 666 * 3. */
	ASSERT_EQ(st.sent_samples + st.dropped_samples, 667 + 667 * 2 + 666 * 3);
	ASSERT(st.dropped > 0);
	ASSERT(st.sent > 0);
	ASSERT_EQ(st.errors, 0);
	app_stop(&a);
	lupe_apm__free(apm);
}

TEST(storage_published_late_is_retried)
{
	struct lupe_apm_agent_info info;
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	char sock[PATH_MAX];

	NEED_FIXTURES();
	apm = new_apm(&bl, false);
	ASSERT(apm);
	wpath(sock, "run/late.sock");
	if (app_run(&a, "late", sock, false, "--bind", "--storage-delay-ms", "600") ||
	    !wait_line(a.log, "waiting ", NULL, 0, 5000)) {
		app_stop(&a);
		lupe_apm__free(apm);
		FAIL("fixture app did not start");
	}
	ASSERT_EQ(lupe_apm__scan(apm, a.pid), -EAGAIN);
	lupe_apm__stats(apm, &st);
	ASSERT_EQ(st.pending, 1);
	ASSERT_EQ(st.agents, 0);
	ASSERT(lupe_apm__notify(apm, a.pid, &test_ids, (struct lupe_file_id){ 1, 1 }, 1) == NULL);
	ASSERT_EQ(bl.attached, 0);
	ASSERT(wait_line(a.log, "ready ", NULL, 0, 5000));
	ASSERT_EQ(lupe_apm__retry(apm, 0), 1);
	ASSERT_OK(lupe_apm__agent_info(apm, a.pid, &info));
	ASSERT(info.attached);
	ASSERT(info.socket_open);
	ASSERT_EQ(bl.attached, 1);
	ASSERT_EQ(lupe_apm__retry(apm, 0), 0);
	app_stop(&a);
	lupe_apm__free(apm);
}

TEST(malformed_storage_is_counted)
{
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	char sock[PATH_MAX];
	pid_t pid;

	NEED_FIXTURES();
	apm = new_apm(&bl, false);
	ASSERT(apm);
	wpath(sock, "run/bad.sock");
	if (app_run(&a, "bad", sock, true, "--bad-length", NULL, NULL)) {
		app_stop(&a);
		lupe_apm__free(apm);
		FAIL("fixture app did not start");
	}
	ASSERT_EQ(lupe_apm__scan(apm, a.pid), -EINVAL);
	lupe_apm__stats(apm, &st);
	ASSERT_EQ(st.storage_errors, 1);
	ASSERT_EQ(st.agents, 0);
	ASSERT_EQ(st.pending, 0);
	ASSERT_EQ(bl.attached, 0);
	pid = a.pid;
	app_stop(&a);
	ASSERT_EQ(lupe_apm__scan(apm, pid), -ESRCH);
	lupe_apm__free(apm);
}

/* ---- hostile socket paths ----------------------------------------------------------- */

/* Runs an app publishing sock (created by the test, or not at all) and attaches: the
 * agent must be attached, with socket_err == want (0: connected). Returns 0 or -1. */
static int check_socket_path(bool no_openat2, const char *tag, const char *sock, int want,
			     bool want_rejected)
{
	struct lupe_apm_agent_info info;
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm = new_apm(&bl, no_openat2);
	struct app a;
	int rc = -1;

	if (!apm)
		return -1;
	if (app_run(&a, tag, sock, true, NULL, NULL, NULL)) {
		printf("    %s: fixture app did not start\n", tag);
		goto out;
	}
	if (lupe_apm__scan(apm, a.pid) || lupe_apm__agent_info(apm, a.pid, &info)) {
		printf("    %s: not attached\n", tag);
		goto out;
	}
	lupe_apm__stats(apm, &st);
	if (!info.attached || info.socket_err != want || info.socket_open != (want == 0) ||
	    st.rejected_paths != (want_rejected ? 1u : 0u)) {
		printf("    %s (%s): socket_err %d (%s), want %d; open %d; rejected %llu\n", tag,
		       no_openat2 ? "walk" : "openat2", info.socket_err, strerror(-info.socket_err),
		       want, info.socket_open, (unsigned long long)st.rejected_paths);
		goto out;
	}
	/* Never anything sent where the path was refused. */
	lupe_apm__notify(apm, a.pid, &test_ids, (struct lupe_file_id){ 5, 6 }, 1);
	lupe_apm__stats(apm, &st);
	if (st.sent != (want == 0 ? 1u : 0u)) {
		printf("    %s: sent %llu\n", tag, (unsigned long long)st.sent);
		goto out;
	}
	rc = 0;
out:
	app_stop(&a);
	lupe_apm__free(apm);
	return rc;
}

TEST(hostile_socket_paths_are_refused)
{
	char good[PATH_MAX], p[PATH_MAX], fifo[PATH_MAX], file[PATH_MAX], link[PATH_MAX];
	int fd, mode;

	NEED_FIXTURES();
	wpath(good, "run/good.sock");
	fd = bind_dgram(good);
	ASSERT(fd >= 0);
	chmod(good, 0777);
	wpath(fifo, "run/fifo.sock");
	ASSERT_OK(mkfifo(fifo, 0666));
	wpath(file, "run/file.sock");
	ASSERT_OK(lupe_test_run("touch '%s'", file));
	wpath(link, "run/link.sock");
	ASSERT_OK(symlink(good, link));
	for (mode = have_openat2() ? 0 : 1; mode < 2; mode++) {
		bool walk = mode == 1;

		/* The baseline: a socket anyone may write is accepted. */
		ASSERT_OK(check_socket_path(walk, "good", good, 0, false));
		ASSERT(has_datagram(fd));
		ASSERT(!has_datagram(fd));
		snprintf(p, sizeof(p), "%s/run/../run/good.sock", work);
		ASSERT_OK(check_socket_path(walk, "dotdot", p, -EINVAL, true));
		ASSERT_OK(check_socket_path(walk, "relative", "run/good.sock", -EINVAL, true));
		ASSERT_OK(check_socket_path(walk, "fifo", fifo, -ENOTSOCK, true));
		ASSERT_OK(check_socket_path(walk, "file", file, -ENOTSOCK, true));
		wpath(p, "run/missing.sock");
		ASSERT_OK(check_socket_path(walk, "missing", p, -ENOENT, true));
		/* A /proc magic link would leave the target's root: refused both ways. */
		snprintf(p, sizeof(p), "/proc/self/root%s", good);
		ASSERT_OK(check_socket_path(walk, "magiclink", p, -ELOOP, true));
		/* A symlink inside the root: followed there by openat2, refused by the walk. */
		ASSERT(!has_datagram(fd)); /* nothing reached it through a refused path */
		ASSERT_OK(check_socket_path(walk, "symlink", link, walk ? -ELOOP : 0, walk));
		ASSERT_EQ(has_datagram(fd), !walk);
	}
	close(fd);
}

TEST(socket_the_target_cannot_write_is_refused)
{
	char sock[PATH_MAX], nb[PATH_MAX], log[PATH_MAX], app[PATH_MAX], line[512];
	struct lupe_apm_agent_info info;
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	int fd;

	if (!is_root())
		SKIP("needs root (runs the fixture as nobody)");
	if (lupe_test_run("command -v setpriv >/dev/null") != 0)
		SKIP("setpriv is missing");
	NEED_FIXTURES();
	wpath(app, "bin/app");
	wpath(nb, "nobody");
	ASSERT_OK(lupe_test_run("mkdir -p '%s' && chown nobody '%s'", nb, nb));
	wpath(log, "nobody/app.log");
	wpath(sock, "run/rootonly.sock");
	fd = bind_dgram(sock);
	ASSERT(fd >= 0);
	ASSERT_OK(chmod(sock, 0755)); /* root may write, nobody may not */

	for (int round = 0; round < 3; round++) {
		/* 0: root's 0755 socket (refused); 1: made 0757 (others may write: accepted);
		 * 2: nobody's own socket. */
		char own[PATH_MAX];
		char *argv[] = { "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
				 app, "--log", log, "--socket", round == 2 ? own : sock,
				 round == 2 ? "--bind" : NULL, NULL };

		wpath(own, "nobody/own.sock");
		if (round == 1)
			ASSERT_OK(chmod(sock, 0757));
		unlink(log);
		apm = new_apm(&bl, false);
		ASSERT(apm);
		if (app_start(&a, log, true, argv)) {
			app_stop(&a);
			lupe_apm__free(apm);
			FAIL("round %d: fixture app did not start as nobody", round);
		}
		ASSERT_OK(capture_line(line, sizeof(line), "awk '/^Uid:/ { print $3 }' /proc/%d/status",
				       a.pid));
		ASSERT_STREQ(line, "65534");
		ASSERT_OK(lupe_apm__scan(apm, a.pid));
		ASSERT_OK(lupe_apm__agent_info(apm, a.pid, &info));
		lupe_apm__stats(apm, &st);
		if (round == 0) {
			ASSERT_EQ(info.socket_err, -EACCES);
			ASSERT(!info.socket_open);
			ASSERT_EQ(st.rejected_paths, 1);
		} else {
			ASSERT_EQ(info.socket_err, 0);
			ASSERT(info.socket_open);
			ASSERT_EQ(st.rejected_paths, 0);
		}
		lupe_apm__notify(apm, a.pid, &test_ids, (struct lupe_file_id){ 9, 9 }, 1);
		if (round == 2)
			ASSERT(wait_line(log, "msg len=46 type=1", NULL, 0, 3000));
		app_stop(&a);
		lupe_apm__free(apm);
	}
	close(fd);
}

/* A chroot holding the app and what ldd says it needs. The agent library goes where the
 * loader looks by default: without /proc in the chroot, $ORIGIN means nothing. */
static int make_chroot(const char *dir)
{
	return lupe_test_run("set -e; mkdir -p '%s/lib/x86_64-linux-gnu'; cp %s/bin/app '%s'/;"
		   " cp %s/bin/elastic-jvmti-linux-x86_64.so '%s/lib/x86_64-linux-gnu/';"
		   " for f in $(ldd %s/bin/app | grep -o '/[^ ]*'); do cp --parents -L \"$f\" '%s'; done",
		   dir, work, dir, work, dir, work, dir);
}

TEST(symlinks_out_of_the_target_root_are_refused)
{
	char root[PATH_MAX], outside[PATH_MAX], p[PATH_MAX], log[PATH_MAX];
	struct lupe_apm_agent_info info;
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	int fd, mode, i;

	if (!is_root())
		SKIP("needs root (chroot)");
	NEED_FIXTURES();
	wpath(root, "chroot");
	ASSERT_OK(make_chroot(root));
	wpath(outside, "outside.sock");
	fd = bind_dgram(outside);
	ASSERT(fd >= 0);
	chmod(outside, 0777);
	/* Inside the chroot: an absolute link naming the outside socket's host path, and a
	 * relative one climbing far above the chroot to reach it. */
	ASSERT_OK(lupe_test_run("ln -s '%s' '%s/abs.sock' && "
				"ln -s '../../../../../../../../..%s' '%s/rel.sock'",
				outside, root, outside, root));
	/* Before any lupe code: the naive path (root prefix + path) would escape. */
	snprintf(p, sizeof(p), "%s/abs.sock", root);
	{
		struct stat sb;

		ASSERT_OK(stat(p, &sb));
		ASSERT(S_ISSOCK(sb.st_mode));
	}
	snprintf(log, sizeof(log), "%s/app.log", root);
	for (mode = have_openat2() ? 0 : 1; mode < 2; mode++) {
		static const char *const paths[] = { "/abs.sock", "/rel.sock", "/in.sock" };

		for (i = 0; i < 3; i++) {
			char *argv[] = { "chroot", root, "/app", "--log", "/app.log", "--socket",
					 (char *)paths[i], i == 2 ? "--bind" : NULL, NULL };

			unlink(log);
			apm = new_apm(&bl, mode == 1);
			ASSERT(apm);
			if (app_start(&a, log, true, argv)) {
				app_stop(&a);
				lupe_apm__free(apm);
				FAIL("fixture app did not start in the chroot");
			}
			ASSERT_OK(lupe_apm__scan(apm, a.pid));
			ASSERT_OK(lupe_apm__agent_info(apm, a.pid, &info));
			ASSERT_EQ(info.tls_offset, a.tls_offset);
			lupe_apm__notify(apm, a.pid, &test_ids, (struct lupe_file_id){ 3, 4 }, 1);
			lupe_apm__stats(apm, &st);
			if (i < 2) {
				/* Resolved inside the chroot, where nothing is at that path; the walk
				 * refuses the link itself. */
				ASSERT_EQ(info.socket_err, mode == 1 ? -ELOOP : -ENOENT);
				ASSERT_EQ(st.rejected_paths, 1);
				ASSERT_EQ(st.sent, 0);
			} else {
				ASSERT_EQ(info.socket_err, 0);
				ASSERT_EQ(st.sent, 1);
				ASSERT(wait_line(log, "msg len=46 type=1", NULL, 0, 3000));
			}
			app_stop(&a);
			lupe_apm__free(apm);
		}
	}
	usleep(50000);
	ASSERT(!has_datagram(fd));
	close(fd);
}

TEST(send_stays_in_the_target_mount_namespace)
{
	char dir[PATH_MAX], decoy[PATH_MAX], log[PATH_MAX], app[PATH_MAX], cmd[4 * PATH_MAX];
	struct lupe_apm_agent_info info;
	struct lupe_apm_stats st;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	int fd;

	if (!is_root())
		SKIP("needs root (unshare -m)");
	if (lupe_test_run("command -v unshare >/dev/null") != 0)
		SKIP("unshare is missing");
	NEED_FIXTURES();
	wpath(dir, "mnt");
	wpath(app, "bin/app");
	wpath(log, "run/mnt.log");
	ASSERT_OK(lupe_test_run("mkdir -p '%s'", dir));
	/* The host sees a decoy socket at the very path the agent binds in its own tmpfs. */
	wpath(decoy, "mnt/s.sock");
	fd = bind_dgram(decoy);
	ASSERT(fd >= 0);
	chmod(decoy, 0777);
	snprintf(cmd, sizeof(cmd), "mount -t tmpfs tmpfs '%s' && exec '%s' --log '%s' "
		 "--socket '%s' --bind", dir, app, log, decoy);
	{
		char *argv[] = { "unshare", "-m", "--propagation", "private", "sh", "-c", cmd, NULL };

		unlink(log);
		if (app_start(&a, log, true, argv)) {
			app_stop(&a);
			FAIL("fixture app did not start in its mount namespace");
		}
	}
	apm = new_apm(&bl, false);
	ASSERT(apm);
	ASSERT_OK(lupe_apm__scan(apm, a.pid));
	ASSERT_OK(lupe_apm__agent_info(apm, a.pid, &info));
	ASSERT(info.socket_open);
	lupe_apm__notify(apm, a.pid, &test_ids, (struct lupe_file_id){ 7, 8 }, 2);
	lupe_apm__stats(apm, &st);
	ASSERT_EQ(st.sent, 1);
	ASSERT(wait_line(log, "msg len=46 type=1", NULL, 0, 3000));
	ASSERT(!has_datagram(fd));
	app_stop(&a);
	lupe_apm__free(apm);
	close(fd);
}

/* ---- through the process manager ---------------------------------------------------- */

TEST(procmgr_decorators_attach_and_detach)
{
	struct lupe_apm_agent_info info;
	struct lupe_ebpf_handler *inner;
	const struct lupe_ebpf_record *r;
	struct lupe_procmgr *pm;
	struct bpf_log bl;
	struct lupe_apm *apm;
	struct app a;
	char sock[PATH_MAX];
	size_t n, i, adds = 0;
	pid_t pid;

	NEED_FIXTURES();
	apm = new_apm(&bl, false);
	ASSERT(apm);
	{
		LUPE_OPTS(lupe_procmgr_opts, opts,
			  .ebpf = lupe_apm_ebpf_new(apm, lupe_ebpf_recorder_new()),
			  .reporter = lupe_apm_reporter_new(apm, NULL));
		ASSERT(opts.ebpf && opts.reporter);
		pm = lupe_procmgr__new(&opts);
	}
	ASSERT(pm);
	wpath(sock, "run/pm.sock");
	if (app_run(&a, "pm", sock, true, "--bind", NULL, NULL)) {
		app_stop(&a);
		lupe_procmgr__free(pm);
		lupe_apm__free(apm);
		FAIL("fixture app did not start");
	}
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, a.pid));
	ASSERT_OK(lupe_apm__agent_info(apm, a.pid, &info));
	ASSERT(info.attached);
	ASSERT_EQ(info.tls_offset, a.tls_offset);
	ASSERT_STREQ(info.storage.service, "lupe-test-svc");
	ASSERT_EQ(bl.attached, 1);
	/* The wrapped recorder saw the calls too. */
	inner = lupe_apm_ebpf_inner(lupe_procmgr__ebpf(pm));
	ASSERT(inner && lupe_ebpf_handler_is_recorder(inner));
	r = lupe_ebpf_recorder_records(inner, &n);
	for (i = 0; i < n; i++)
		adds += r[i].call == LUPE_EBPF_ADD_MAPPING;
	ASSERT(adds >= 3); /* app, the agent library, libc, ld.so */
	/* A second synchronization adds nothing. */
	ASSERT_OK(lupe_procmgr__synchronize_process(pm, a.pid));
	ASSERT_EQ(bl.attached, 1);
	pid = a.pid;
	app_stop(&a);
	ASSERT_EQ(lupe_procmgr__synchronize_process(pm, pid), -ESRCH);
	ASSERT_EQ(bl.detached, 1);
	ASSERT_EQ(lupe_apm__agent_info(apm, pid, &info), -ENOENT);
	lupe_procmgr__free(pm);
	lupe_apm__free(apm);
}

/* ---- the session's tally -------------------------------------------------------------- */

static struct lupe_sample apm_sample(pid_t pid, const struct lupe_apm_ids *ids)
{
	struct lupe_sample smp = { .pid = (__u32)pid, .tid = (__u32)pid, .ktime = lupe_ktime_now(),
				   .user_len = 1 };

	memcpy(smp.comm, "app", 4);
	smp.frames[0] = 0x1234; /* not mapped: an unknown frame, converted all the same */
	if (ids) {
		smp.flags = LUPE_SAMPLE_APM;
		smp.apm = *ids;
	}
	return smp;
}

/* Whether the log has a message of this transaction, stack and count. */
static bool has_msg(const char *log, const struct lupe_apm_ids *ids, const char *stack,
		    unsigned count)
{
	char th[33], tx[17], want[256];

	hex(th, ids->trace_id, 16);
	hex(tx, ids->tx_id, 8);
	snprintf(want, sizeof(want), "msg len=46 type=1 minor=1 trace=%s tx=%s stack=%s count=%u",
		 th, tx, stack, count);
	return wait_line(log, want, NULL, 0, 100);
}

TEST(session_notifies_each_transaction_separately)
{
	LUPE_OPTS(lupe_session_opts, so, .offline = true);
	struct lupe_apm_ids other = test_ids;
	const struct lupe_profile_entry *e;
	const struct lupe_sym_trace *t;
	struct lupe_session_stats st;
	struct lupe_session *s;
	struct lupe_sample smp;
	struct app a;
	char sock[PATH_MAX], stack[33];
	size_t n;
	int i;

	NEED_FIXTURES();
	other.tx_id[7] ^= 0xff;
	wpath(sock, "run/session.sock");
	if (app_run(&a, "session", sock, true, "--bind", NULL, NULL)) {
		app_stop(&a);
		FAIL("fixture app did not start");
	}
	s = lupe_session__new(&so);
	ASSERT(s);
	/* The manager's decorators find the agent as the process is read. */
	ASSERT_OK(lupe_procmgr__synchronize_process(lupe_session__procmgr(s), a.pid));
	for (i = 0; i < 10; i++) {
		smp = apm_sample(a.pid, i < 5 ? &test_ids : i < 8 ? &other : NULL);
		ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	}
	ASSERT(lupe_session__poll(s, 0) >= 0);
	/* One entry (the same stack), its service named, 8 of its 10 samples in two
	 * transactions: two datagrams, 5 and 3. */
	e = lupe_session__entries(s, &n);
	ASSERT_EQ(n, 1);
	ASSERT_EQ(e[0].count, 10);
	ASSERT(e[0].service);
	ASSERT_STREQ(e[0].service, "lupe-test-svc");
	t = lupe_session__trace(s, e[0].trace);
	ASSERT(t);
	lupe_file_id_format(t->hash, stack);
	for (i = 0; i < 300 && count_lines(a.log, "msg ") < 2; i++)
		usleep(10000);
	ASSERT_EQ(count_lines(a.log, "msg "), 2);
	ASSERT(has_msg(a.log, &test_ids, stack, 5));
	ASSERT(has_msg(a.log, &other, stack, 3));
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.apm_samples, 8);
	ASSERT_EQ(st.apm_notified, 8);
	ASSERT_EQ(st.apm.sent, 2);
	ASSERT_EQ(st.apm.sent_samples, 8);
	ASSERT_EQ(st.apm.agents, 1);
	/* The next drain notifies only what it drained. */
	smp = apm_sample(a.pid, &other);
	ASSERT_OK(lupe_session__ingest_sample(s, &smp));
	ASSERT(lupe_session__poll(s, 0) >= 0);
	ASSERT(has_msg(a.log, &other, stack, 1));
	lupe_session__stats(s, &st);
	ASSERT_EQ(st.apm.sent, 3);
	ASSERT_EQ(st.apm_notified, 9);
	lupe_session__free(s);
	app_stop(&a);
}
