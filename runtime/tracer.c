/* The tracer: the user side of bpf/sampler.bpf.c (see tracer.h). */
#define LUPE_LOG_PREFIX "tracer: "
#include "log.h"
#include "tracer.h"
#include "sampler.skel.h"
#include "stackdeltas.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DEFAULT_FREQUENCY 99
#define DEFAULT_RINGBUF_BYTES ((size_t)8 << 20)
#define DEFAULT_EVENTS_RINGBUF_BYTES ((size_t)256 << 10)
#define MAX_RINGBUF_BYTES ((size_t)1 << 30)
#define DEFAULT_MAX_PIDS 8192
#define DEFAULT_MAX_CGROUPS 256
#define DEFAULT_UNWIND_BUDGET ((size_t)64 << 20)
#define DEFAULT_UNWIND_PREFIXES 262144
#define DEFAULT_UNWIND_FILES 16384
/* Page entries allowed per budget byte: one per KiB (a 64 KiB page of code has ~1500
 * deltas, 6 KiB of slots), so pages never take more than ~10% of the budget. */
#define UNWIND_BYTES_PER_PAGE 1024
#define MIN_UNWIND_PAGES 4096
#define UNWIND_CHUNK_BYTES ((size_t)4 << LUPE_UNWIND_CHUNK_BITS)
#define MIN_REPORTED_PIDS 16384
#define MAX_MAP_ENTRIES ((size_t)1 << 24)
#define BTF_PATH "/sys/kernel/btf/vmlinux"
#define CPU_ONLINE_PATH "/sys/devices/system/cpu/online"
#define MAX_STACK_SYSCTL "/proc/sys/kernel/perf_event_max_stack"
#define MAX_RATE_SYSCTL "/proc/sys/kernel/perf_event_max_sample_rate"

_Static_assert(sizeof(struct lupe_sampler_counters) % sizeof(__u64) == 0,
	       "counters are summed as an array of __u64");

struct tracer_cpu {
	int cpu;
	int pfd;                        /* owned by link once attached */
	struct bpf_link *link;
};

struct lupe_tracer {
	struct sampler_bpf *skel;
	struct ring_buffer *rb;
	struct tracer_cpu *cpus;
	size_t ncpus;
	int nr_possible;                /* per-CPU map values come in this many slots */
	int stats_fd;                   /* BPF_STATS_RUN_TIME stays on while open; -1 */
	unsigned int frequency;
	__u32 event_type;
	__u64 event_config;
	size_t max_pids, max_cgroups;
	bool unwind, handler_made;
	size_t unwind_budget, unwind_pages, unwind_chunks;
	/* Set only during lupe_tracer__poll. */
	const struct lupe_tracer_handlers *h;
	void *hctx;
	__u64 samples_read, events_read, bad_records;
};

static void set_mode(struct lupe_tracer *t, __u32 mode);

/* Reads a field of a sized opts struct: fields past opts->sz read as 0 (older callers). */
#define OPT(o, field)                                                       \
	((o) && (o)->sz >= offsetof(__typeof__(*(o)), field) + sizeof((o)->field) \
	 ? (o)->field : 0)

static bool opts_valid(const struct lupe_tracer_opts *o)
{
	const char *p;
	size_t i;

	if (!o)
		return true;
	if (o->sz < sizeof(size_t))
		return false;
	/* A newer caller's fields we do not know must be unset. */
	p = (const char *)o;
	for (i = sizeof(*o); i < o->sz; i++)
		if (p[i])
			return false;
	return true;
}

static bool is_pow2(size_t v)
{
	return v && !(v & (v - 1));
}

int lupe_tracer_parse_cpus(const char *text, bool *online, size_t n)
{
	const char *p = text;
	unsigned long a, b, i;
	char *end;
	int count = 0;

	if (!text)
		return -EINVAL;
	if (online)
		memset(online, 0, n * sizeof(*online));
	while (*p && *p != '\n') {
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		errno = 0;
		a = strtoul(p, &end, 10);
		if (errno || a > INT_MAX)
			return -EINVAL;
		b = a;
		p = end;
		if (*p == '-') {
			p++;
			if (!isdigit((unsigned char)*p))
				return -EINVAL;
			b = strtoul(p, &end, 10);
			if (errno || b > INT_MAX || b < a)
				return -EINVAL;
			p = end;
		}
		if (*p == ',')
			p++;
		else if (*p && *p != '\n')
			return -EINVAL;
		if (b - a >= (unsigned long)(INT_MAX - count))
			return -EINVAL;
		count += b - a + 1;
		for (i = a; i <= b && i < n; i++)
			if (online)
				online[i] = true;
	}
	return count;
}

static int read_small_file(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int fd, err;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, size - 1);
	err = n < 0 ? -errno : 0;
	close(fd);
	if (err)
		return err;
	buf[n] = '\0';
	return 0;
}

/* Whether this process may load tracing BPF and open perf events system-wide. */
static bool has_bpf_privileges(void)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2] = { { 0 } };
	__u64 eff;

	if (syscall(SYS_capget, &hdr, data))
		return geteuid() == 0;
	eff = data[0].effective | (__u64)data[1].effective << 32;
	if (eff & (1ULL << CAP_SYS_ADMIN))
		return true;
	return (eff & (1ULL << 39 /* CAP_BPF */)) && (eff & (1ULL << 38 /* CAP_PERFMON */));
}

static const char *privilege_hint(int err)
{
	if ((err == -EPERM || err == -EACCES) && !has_bpf_privileges())
		return ": lupe needs root, or CAP_BPF and CAP_PERFMON";
	return "";
}

static int on_sample(void *ctx, void *data, size_t size)
{
	struct lupe_tracer *t = ctx;
	const struct lupe_sample *s = data;

	if (size < LUPE_SAMPLE_HDR_SIZE ||
	    (size_t)s->kernel_len + s->user_len > LUPE_MAX_FRAMES ||
	    LUPE_SAMPLE_HDR_SIZE + 8 * ((size_t)s->kernel_len + s->user_len) > size) {
		t->bad_records++;
		return 0;
	}
	t->samples_read++;
	if (t->h && t->h->sample)
		return t->h->sample(t->hctx, s);
	return 0;
}

static int on_event(void *ctx, void *data, size_t size)
{
	struct lupe_tracer *t = ctx;

	if (size < sizeof(struct lupe_proc_event)) {
		t->bad_records++;
		return 0;
	}
	t->events_read++;
	if (t->h && t->h->event)
		return t->h->event(t->hctx, data);
	return 0;
}

static int open_cpu_event(struct lupe_tracer *t, struct perf_event_attr *attr, int cpu)
{
	int pfd;

	pfd = syscall(SYS_perf_event_open, attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC);
	return pfd >= 0 ? pfd : -errno;
}

static void explain_perf_error(const struct perf_event_attr *attr, int cpu, int err)
{
	char max_rate[32] = "";

	if (err == -ENOENT || err == -EOPNOTSUPP || err == -ENODEV) {
		pr_warn("perf event type %u config %llu: cannot sample on cpu %d: %s: this machine "
			"has no such event (VMs often have no hardware PMU); use cpu-clock",
			attr->type, (unsigned long long)attr->config, cpu, lupe_errstr(err));
	} else if (err == -EINVAL) {
		read_small_file(MAX_RATE_SYSCTL, max_rate, sizeof(max_rate));
		max_rate[strcspn(max_rate, "\n")] = '\0';
		pr_warn("perf event type %u config %llu at %llu Hz: failed to open on cpu %d: %s: "
			"is the frequency above kernel.perf_event_max_sample_rate (%s)?",
			attr->type, (unsigned long long)attr->config,
			(unsigned long long)attr->sample_freq, cpu, lupe_errstr(err),
			max_rate[0] ? max_rate : "unknown");
	} else {
		pr_warn("perf event type %u config %llu: failed to open on cpu %d: %s%s",
			attr->type, (unsigned long long)attr->config, cpu, lupe_errstr(err),
			privilege_hint(err));
	}
}

static int attach_cpus(struct lupe_tracer *t, const struct lupe_tracer_opts *opts)
{
	struct perf_event_attr attr;
	char text[4096];
	bool *online = NULL;
	int cpu, err, pfd;

	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = t->event_type;
	attr.config = t->event_config;
	attr.freq = 1;
	attr.sample_freq = t->frequency;

	err = read_small_file(CPU_ONLINE_PATH, text, sizeof(text));
	if (err) {
		pr_warn("failed to read '%s': %s", CPU_ONLINE_PATH, lupe_errstr(err));
		goto out;
	}
	online = calloc(t->nr_possible, sizeof(*online));
	t->cpus = calloc(t->nr_possible, sizeof(*t->cpus));
	if (!online || !t->cpus) {
		err = -ENOMEM;
		goto out;
	}
	err = lupe_tracer_parse_cpus(text, online, t->nr_possible);
	if (err < 0) {
		pr_warn("'%s': cannot parse \"%s\"", CPU_ONLINE_PATH, text);
		goto out;
	}
	for (cpu = 0; cpu < t->nr_possible; cpu++) {
		struct tracer_cpu *c = &t->cpus[t->ncpus];

		if (!online[cpu])
			continue;
		pfd = open_cpu_event(t, &attr, cpu);
		if (pfd == -ENODEV) {
			/* Went offline since we read the mask: nothing to sample there. */
			pr_info("cpu %d went offline, not sampled", cpu);
			continue;
		}
		if (pfd < 0) {
			err = pfd;
			explain_perf_error(&attr, cpu, err);
			goto out;
		}
		c->cpu = cpu;
		c->pfd = pfd;
		c->link = bpf_program__attach_perf_event(t->skel->progs.lupe_sample, pfd);
		if (!c->link) {
			err = -errno;
			close(pfd);
			pr_warn("prog 'lupe_sample': failed to attach to perf event on cpu %d: %s",
				cpu, lupe_errstr(err));
			goto out;
		}
		t->ncpus++;
	}
	if (!t->ncpus) {
		pr_warn("no online CPU to sample (\"%s\")", text);
		err = -ENODEV;
		goto out;
	}
	err = 0;
	if (OPT(opts, start_paused))
		err = lupe_tracer__pause(t);
out:
	free(online);
	return err;
}

static void set_rodata(struct lupe_tracer *t, const struct lupe_tracer_opts *opts,
		       size_t rb_bytes, size_t ev_bytes)
{
	struct sampler_bpf__rodata *ro = t->skel->rodata;
	char text[32];
	long max_stack;

	ro->kernel_stacks = !OPT(opts, no_kernel_stacks);
	ro->user_stacks = !OPT(opts, no_user_stacks);
	/* The kernel cuts both stacks at kernel.perf_event_max_stack (127 by default): a stack
	 * that long is (probably) truncated. */
	ro->stack_limit = LUPE_MAX_FRAMES;
	if (!read_small_file(MAX_STACK_SYSCTL, text, sizeof(text))) {
		max_stack = strtol(text, NULL, 10);
		if (max_stack > 0 && max_stack < LUPE_MAX_FRAMES)
			ro->stack_limit = max_stack;
	}
	ro->samples_wake_bytes = rb_bytes / 2;
	ro->events_wake_bytes = ev_bytes / 2;
	ro->unwind_enabled = t->unwind;
	ro->unwind_max_frames = OPT(opts, unwind_max_frames) ?: LUPE_MAX_FRAMES;
}

/* The unwinder's maps: sized for use, or to one entry each when unwinding is off. */
static int size_unwind_maps(struct lupe_tracer *t, const struct lupe_tracer_opts *opts)
{
	struct sampler_bpf *sk = t->skel;
	size_t prefixes = OPT(opts, unwind_max_prefixes) ?: DEFAULT_UNWIND_PREFIXES;
	size_t files = OPT(opts, unwind_max_files) ?: DEFAULT_UNWIND_FILES;
	size_t pids = t->max_pids, rules = LUPE_UNWIND_MAX_RULES;
	int err;

	t->unwind_budget = OPT(opts, unwind_budget_bytes) ?: DEFAULT_UNWIND_BUDGET;
	t->unwind_pages = t->unwind_budget / UNWIND_BYTES_PER_PAGE;
	if (t->unwind_pages < MIN_UNWIND_PAGES)
		t->unwind_pages = MIN_UNWIND_PAGES;
	t->unwind_chunks = t->unwind_budget / UNWIND_CHUNK_BYTES;
	if (t->unwind && !t->unwind_chunks) {
		pr_warn("unwinding budget %zu bytes: at least %zu (one chunk of delta slots)",
			t->unwind_budget, UNWIND_CHUNK_BYTES);
		return -EINVAL;
	}
	if (!t->unwind)
		prefixes = files = pids = rules = t->unwind_pages = t->unwind_chunks = 1;
	if (prefixes > MAX_MAP_ENTRIES || files > MAX_MAP_ENTRIES ||
	    t->unwind_pages > MAX_MAP_ENTRIES || OPT(opts, unwind_max_frames) > LUPE_MAX_FRAMES) {
		pr_warn("unwind_max_prefixes %zu / unwind_max_files %zu / budget %zu / max frames "
			"%u: out of range", prefixes, files, t->unwind_budget,
			OPT(opts, unwind_max_frames));
		return -EINVAL;
	}
	if ((err = bpf_map__set_max_entries(sk->maps.unwind_pids, pids)) ||
	    (err = bpf_map__set_max_entries(sk->maps.unwind_mappings, prefixes)) ||
	    (err = bpf_map__set_max_entries(sk->maps.unwind_files, files)) ||
	    (err = bpf_map__set_max_entries(sk->maps.unwind_pages, t->unwind_pages)) ||
	    (err = bpf_map__set_max_entries(sk->maps.unwind_rules, rules)) ||
	    (err = bpf_map__set_max_entries(sk->maps.unwind_tables, t->unwind_chunks)))
		pr_warn("failed to size the unwinding maps: %s", lupe_errstr(err));
	return err;
}

struct lupe_tracer *lupe_tracer__new(const struct lupe_tracer_opts *opts)
{
	struct lupe_tracer *t = NULL;
	size_t rb_bytes, ev_bytes, reported;
	int err, fd;

	if (!opts_valid(opts)) {
		pr_warn("invalid opts: unknown or unset size");
		err = -EINVAL;
		goto err_out;
	}
	rb_bytes = OPT(opts, ringbuf_bytes) ?: DEFAULT_RINGBUF_BYTES;
	ev_bytes = OPT(opts, events_ringbuf_bytes) ?: DEFAULT_EVENTS_RINGBUF_BYTES;
	if (!is_pow2(rb_bytes) || rb_bytes < (size_t)getpagesize() || rb_bytes > MAX_RINGBUF_BYTES ||
	    !is_pow2(ev_bytes) || ev_bytes < (size_t)getpagesize() || ev_bytes > MAX_RINGBUF_BYTES) {
		pr_warn("ring buffer sizes %zu and %zu: each must be a power of two from the page "
			"size to 1 GiB", rb_bytes, ev_bytes);
		err = -EINVAL;
		goto err_out;
	}
	t = calloc(1, sizeof(*t));
	if (!t) {
		err = -ENOMEM;
		goto err_out;
	}
	t->stats_fd = -1;
	t->frequency = OPT(opts, frequency) ?: DEFAULT_FREQUENCY;
	t->event_type = PERF_TYPE_SOFTWARE;
	t->event_config = PERF_COUNT_SW_CPU_CLOCK;
	if (OPT(opts, custom_event)) {
		t->event_type = OPT(opts, event_type);
		t->event_config = OPT(opts, event_config);
	}
	t->max_pids = OPT(opts, max_pids) ?: DEFAULT_MAX_PIDS;
	t->max_cgroups = OPT(opts, max_cgroups) ?: DEFAULT_MAX_CGROUPS;
	if (t->max_pids > MAX_MAP_ENTRIES || t->max_cgroups > MAX_MAP_ENTRIES) {
		pr_warn("max_pids %zu / max_cgroups %zu: at most %zu", t->max_pids, t->max_cgroups,
			MAX_MAP_ENTRIES);
		err = -EINVAL;
		goto err_out;
	}
	if (access(BTF_PATH, R_OK)) {
		err = -errno;
		pr_warn("kernel BTF '%s' unreadable: %s: the sampler needs a kernel built with "
			"CONFIG_DEBUG_INFO_BTF=y", BTF_PATH, lupe_errstr(err));
		if (err == -ENOENT)
			err = -EOPNOTSUPP;
		goto err_out;
	}
	t->nr_possible = libbpf_num_possible_cpus();
	if (t->nr_possible <= 0) {
		err = t->nr_possible < 0 ? t->nr_possible : -ENODEV;
		pr_warn("failed to count possible CPUs: %s", lupe_errstr(err));
		goto err_out;
	}

	lupe_log_attach_libbpf();
	t->skel = sampler_bpf__open();
	if (!t->skel) {
		err = -errno;
		pr_warn("failed to open the sampler BPF object: %s", lupe_errstr(err));
		goto err_out;
	}
	t->unwind = OPT(opts, unwind);
	set_rodata(t, opts, rb_bytes, ev_bytes);
	err = size_unwind_maps(t, opts);
	if (err)
		goto err_out;
	reported = t->max_pids > MIN_REPORTED_PIDS ? t->max_pids : MIN_REPORTED_PIDS;
	if ((err = bpf_map__set_max_entries(t->skel->maps.samples, rb_bytes)) ||
	    (err = bpf_map__set_max_entries(t->skel->maps.events, ev_bytes)) ||
	    (err = bpf_map__set_max_entries(t->skel->maps.targets, t->max_pids)) ||
	    (err = bpf_map__set_max_entries(t->skel->maps.rates, t->max_pids)) ||
	    (err = bpf_map__set_max_entries(t->skel->maps.cgroups, t->max_cgroups)) ||
	    (err = bpf_map__set_max_entries(t->skel->maps.reported, reported))) {
		pr_warn("failed to size the sampler maps: %s", lupe_errstr(err));
		goto err_out;
	}
	err = sampler_bpf__load(t->skel);
	if (err) {
		pr_warn("failed to load the sampler BPF programs: %s%s", lupe_errstr(err),
			privilege_hint(err));
		goto err_out;
	}
	if (OPT(opts, prog_stats)) {
		t->stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
		if (t->stats_fd < 0) {
			err = -errno;
			pr_warn("failed to enable BPF run-time statistics: %s", lupe_errstr(err));
			goto err_out;
		}
	}
	/* Events first: a drain consumes the rings in the order they were added, and a
	 * sample converts correctly only if the exec or exit before it was seen first (the
	 * process manager looks mappings up by capture time, so the reverse is harmless). */
	t->rb = ring_buffer__new(bpf_map__fd(t->skel->maps.events), on_event, t, NULL);
	if (!t->rb) {
		err = -errno;
		pr_warn("map 'events': failed to map the ring buffer: %s", lupe_errstr(err));
		goto err_out;
	}
	fd = bpf_map__fd(t->skel->maps.samples);
	err = ring_buffer__add(t->rb, fd, on_sample, t);
	if (err) {
		pr_warn("map 'samples': failed to map the ring buffer: %s", lupe_errstr(err));
		goto err_out;
	}
	/* Lifecycle tracepoints first, so no process sampled goes unreported. */
	err = sampler_bpf__attach(t->skel);
	if (err) {
		pr_warn("failed to attach the sched tracepoints: %s%s", lupe_errstr(err),
			privilege_hint(err));
		goto err_out;
	}
	/* libbpf enables each perf event as it attaches it: to start paused, filter every
	 * sample out (an empty pid set) until the events are disabled again. */
	if (OPT(opts, start_paused))
		set_mode(t, LUPE_TARGET_PIDS);
	err = attach_cpus(t, opts);
	if (err)
		goto err_out;
	set_mode(t, LUPE_TARGET_ALL);
	return t;

err_out:
	lupe_tracer__free(t);
	errno = -err;
	return NULL;
}

void lupe_tracer__free(struct lupe_tracer *t)
{
	size_t i;

	if (!t)
		return;
	/* The link closes its perf event fd. */
	for (i = 0; i < t->ncpus; i++)
		bpf_link__destroy(t->cpus[i].link);
	free(t->cpus);
	ring_buffer__free(t->rb);
	sampler_bpf__destroy(t->skel);
	if (t->stats_fd >= 0)
		close(t->stats_fd);
	free(t);
}

/* Deletes every key of a map (u32 or u64 keys) but those keep() accepts. The keys are
 * listed first: deleting the walk's cursor would restart the walk. The walk is bounded,
 * since BPF programs may add keys meanwhile. */
static int map_prune(int fd, size_t max_entries,
		     bool (*keep)(const void *key, const void *arg), const void *arg)
{
	__u64 *keys = NULL, *grown, key, next;
	size_t n = 0, cap = 0, i;
	void *prev = NULL;
	int err = 0;

	for (;;) {
		next = 0;
		if (bpf_map_get_next_key(fd, prev, &next)) {
			if (errno != ENOENT)
				err = -errno;
			break;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			grown = realloc(keys, cap * sizeof(*keys));
			if (!grown) {
				err = -ENOMEM;
				break;
			}
			keys = grown;
		}
		keys[n++] = next;
		if (n >= 2 * max_entries)
			break;
		key = next;
		prev = &key;
	}
	for (i = 0; !err && i < n; i++) {
		if (keep && keep(&keys[i], arg))
			continue;
		if (bpf_map_delete_elem(fd, &keys[i]) && errno != ENOENT)
			err = -errno;
	}
	free(keys);
	return err;
}

static void set_mode(struct lupe_tracer *t, __u32 mode)
{
	/* Map updates are syscalls (full barriers); the store publishes the mode after them. */
	__atomic_store_n(&t->skel->bss->target_mode, mode, __ATOMIC_RELEASE);
}

static __u32 get_mode(const struct lupe_tracer *t)
{
	return __atomic_load_n(&t->skel->bss->target_mode, __ATOMIC_ACQUIRE);
}

int lupe_tracer__target_all(struct lupe_tracer *t)
{
	int err;

	if (!t)
		return -EINVAL;
	set_mode(t, LUPE_TARGET_ALL);
	err = map_prune(bpf_map__fd(t->skel->maps.targets), t->max_pids, NULL, NULL);
	if (!err)
		err = map_prune(bpf_map__fd(t->skel->maps.cgroups), t->max_cgroups, NULL, NULL);
	if (err)
		pr_warn("failed to clear the target maps: %s", lupe_errstr(err));
	return err;
}

struct pid_list {
	__u32 *pids;                    /* sorted */
	size_t n;
};

static int cmp_u32(const void *a, const void *b)
{
	__u32 x = *(const __u32 *)a, y = *(const __u32 *)b;

	return x < y ? -1 : x > y;
}

static bool pid_listed(const void *key, const void *arg)
{
	const struct pid_list *l = arg;

	return bsearch(key, l->pids, l->n, sizeof(*l->pids), cmp_u32) != NULL;
}

static int add_pid(struct lupe_tracer *t, pid_t pid, __u8 flags)
{
	int fd = bpf_map__fd(t->skel->maps.targets);
	__u32 key = pid;
	__u8 old;
	int err;

	if (!bpf_map_lookup_elem(fd, &key, &old))
		flags |= old;
	err = bpf_map_update_elem(fd, &key, &flags, BPF_ANY) ? -errno : 0;
	if (err == -E2BIG)
		pr_warn("pid %d: target set full (max_pids %zu): raise max_pids", pid, t->max_pids);
	else if (err)
		pr_warn("pid %d: failed to add to the target set: %s", pid, lupe_errstr(err));
	return err;
}

int lupe_tracer__target_pids(struct lupe_tracer *t, const pid_t *pids, size_t n)
{
	struct pid_list l = { NULL, n };
	size_t i;
	int err;

	if (!t || (n && !pids))
		return -EINVAL;
	if (n > t->max_pids)
		return -E2BIG;
	l.pids = malloc((n ? n : 1) * sizeof(*l.pids));
	if (!l.pids)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		if (pids[i] <= 0) {
			err = -EINVAL;
			goto out;
		}
		l.pids[i] = pids[i];
	}
	qsort(l.pids, n, sizeof(*l.pids), cmp_u32);
	/* Drop the others first, so the set never overflows and a listed pid already in
	 * the set is never missing (no gap in its samples). */
	err = map_prune(bpf_map__fd(t->skel->maps.targets), t->max_pids,
			get_mode(t) == LUPE_TARGET_PIDS ? pid_listed : NULL, &l);
	for (i = 0; !err && i < n; i++)
		err = add_pid(t, pids[i], LUPE_TARGET_EXPLICIT);
	if (err)
		goto out;
	set_mode(t, LUPE_TARGET_PIDS);
	err = map_prune(bpf_map__fd(t->skel->maps.cgroups), t->max_cgroups, NULL, NULL);
out:
	free(l.pids);
	return err;
}

static int add_pid_mode(struct lupe_tracer *t, pid_t pid, __u8 flags)
{
	int err;

	if (!t || pid <= 0)
		return -EINVAL;
	if (get_mode(t) != LUPE_TARGET_PIDS) {
		err = map_prune(bpf_map__fd(t->skel->maps.targets), t->max_pids, NULL, NULL);
		if (err)
			return err;
	}
	err = add_pid(t, pid, flags);
	if (err)
		return err;
	set_mode(t, LUPE_TARGET_PIDS);
	return 0;
}

int lupe_tracer__target_add_pid(struct lupe_tracer *t, pid_t pid)
{
	return add_pid_mode(t, pid, LUPE_TARGET_EXPLICIT);
}

int lupe_tracer__follow_pid(struct lupe_tracer *t, pid_t pid)
{
	return add_pid_mode(t, pid, LUPE_TARGET_EXPLICIT | LUPE_TARGET_INHERIT);
}

static int add_cgroup(struct lupe_tracer *t, __u64 id)
{
	__u8 one = 1;
	int err;

	err = bpf_map_update_elem(bpf_map__fd(t->skel->maps.cgroups), &id, &one, BPF_ANY);
	err = err ? -errno : 0;
	if (err == -E2BIG)
		pr_warn("cgroup %llu: target set full (max_cgroups %zu)", (unsigned long long)id,
			t->max_cgroups);
	else if (err)
		pr_warn("cgroup %llu: failed to add to the target set: %s",
			(unsigned long long)id, lupe_errstr(err));
	return err;
}

static bool same_cgroup(const void *key, const void *arg)
{
	return *(const __u64 *)key == *(const __u64 *)arg;
}

int lupe_tracer__target_cgroup(struct lupe_tracer *t, __u64 cgroup_id)
{
	int err;

	if (!t || !cgroup_id)
		return -EINVAL;
	err = map_prune(bpf_map__fd(t->skel->maps.cgroups), t->max_cgroups,
			get_mode(t) == LUPE_TARGET_CGROUP ? same_cgroup : NULL, &cgroup_id);
	if (!err)
		err = add_cgroup(t, cgroup_id);
	if (err)
		return err;
	set_mode(t, LUPE_TARGET_CGROUP);
	return map_prune(bpf_map__fd(t->skel->maps.targets), t->max_pids, NULL, NULL);
}

int lupe_tracer__target_add_cgroup(struct lupe_tracer *t, __u64 cgroup_id)
{
	int err;

	if (!t || !cgroup_id)
		return -EINVAL;
	if (get_mode(t) != LUPE_TARGET_CGROUP) {
		err = map_prune(bpf_map__fd(t->skel->maps.cgroups), t->max_cgroups, NULL, NULL);
		if (err)
			return err;
	}
	err = add_cgroup(t, cgroup_id);
	if (err)
		return err;
	set_mode(t, LUPE_TARGET_CGROUP);
	return 0;
}

int lupe_tracer__poll(struct lupe_tracer *t, int timeout_ms,
		      const struct lupe_tracer_handlers *h, void *ctx)
{
	long long n = 0;
	int err;

	if (!t || timeout_ms < 0)
		return -EINVAL;
	t->h = h;
	t->hctx = ctx;
	if (timeout_ms > 0) {
		/* Sleeps: the sampler submits without wakeups, except when a ring fills up. */
		err = ring_buffer__poll(t->rb, timeout_ms);
		if (err < 0)
			goto out;
		n = err;
	}
	err = ring_buffer__consume(t->rb);
	if (err < 0)
		goto out;
	n += err;
	err = n > INT_MAX ? INT_MAX : (int)n;
out:
	t->h = NULL;
	t->hctx = NULL;
	return err;
}

static int prog_run_stats(struct lupe_tracer *t, __u64 *run_ns, __u64 *run_cnt)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(bpf_program__fd(t->skel->progs.lupe_sample), &info, &len))
		return -errno;
	*run_ns = info.run_time_ns;
	*run_cnt = info.run_cnt;
	return 0;
}

/* The kernel's own account of a map's memory: "memlock:" in its fdinfo. */
static __u64 map_bytes(const struct lupe_tracer *t)
{
	struct bpf_map *m;
	char path[64], line[128];
	__u64 sum = 0;

	bpf_object__for_each_map(m, t->skel->obj) {
		unsigned long long v;
		FILE *f;

		if (bpf_map__fd(m) < 0)
			continue;
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", bpf_map__fd(m));
		f = fopen(path, "re");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "memlock: %llu", &v) == 1)
				sum += v;
		fclose(f);
	}
	return sum;
}

int lupe_tracer__stats(struct lupe_tracer *t, struct lupe_tracer_stats *st)
{
	const size_t nfields = sizeof(struct lupe_sampler_counters) / sizeof(__u64);
	struct lupe_sampler_counters *percpu = NULL, sum;
	__u64 *out = (__u64 *)&sum;
	__u32 zero = 0;
	int cpu, err;
	size_t i;

	if (!t || !st)
		return -EINVAL;
	percpu = calloc(t->nr_possible, sizeof(*percpu));
	if (!percpu)
		return -ENOMEM;
	err = bpf_map_lookup_elem(bpf_map__fd(t->skel->maps.counters), &zero, percpu);
	if (err) {
		err = -errno;
		pr_warn("map 'counters': failed to read: %s", lupe_errstr(err));
		goto out;
	}
	memset(&sum, 0, sizeof(sum));
	for (cpu = 0; cpu < t->nr_possible; cpu++) {
		const __u64 *in = (const __u64 *)&percpu[cpu];

		for (i = 0; i < nfields; i++)
			out[i] += in[i];
	}
	memset(st, 0, sizeof(*st));
	st->samples_seen = sum.samples_seen;
	st->idle = sum.idle;
	st->filtered = sum.filtered;
	st->emitted = sum.emitted;
	st->ringbuf_full = sum.ringbuf_full;
	st->kernel_stack_err = sum.kernel_stack_err;
	st->user_stack_err = sum.user_stack_err;
	st->kernel_trunc = sum.kernel_trunc;
	st->user_trunc = sum.user_trunc;
	st->events_emitted = sum.events_emitted;
	st->events_lost = sum.events_lost;
	st->events_ratelimited = sum.events_ratelimited;
	st->follow_full = sum.follow_full;
	st->unwind_samples = sum.unwind_samples;
	st->unwind_frames = sum.unwind_frames;
	st->fallback_frames = sum.fallback_frames;
	st->unknown_pid = sum.unknown_pid;
	st->no_table_frames = sum.no_table_frames;
	st->unwind_stops = sum.unwind_stops;
	st->sync_requests = sum.sync_requests;
	st->unwind_cache_hits = sum.unwind_cache_hits;
	memcpy(st->unwind_err, sum.unwind_err, sizeof(st->unwind_err));
	st->rate_skipped = sum.rate_skipped;
	st->window_skipped = sum.window_skipped;
	st->filter_dropped = sum.filter_dropped;
	st->map_bytes = map_bytes(t);
	st->samples_read = t->samples_read;
	st->events_read = t->events_read;
	st->bad_records = t->bad_records;
	st->ncpus = t->ncpus;
	if (t->stats_fd >= 0) {
		err = prog_run_stats(t, &st->prog_run_ns, &st->prog_run_cnt);
		if (err) {
			pr_warn("prog 'lupe_sample': failed to read run statistics: %s",
				lupe_errstr(err));
			goto out;
		}
	}
	err = 0;
out:
	free(percpu);
	return err;
}

/* kernel.perf_event_max_sample_rate, which the kernel lowers by itself when sampling
 * interrupts take too long. 0 if unreadable. */
static unsigned long max_sample_rate(void)
{
	char text[32];

	if (read_small_file(MAX_RATE_SYSCTL, text, sizeof(text)))
		return 0;
	return strtoul(text, NULL, 10);
}

/* The hrtimer-driven software events turn a frequency into a fixed period when they are
 * created (perf_swevent_init_hrtimer clears attr.freq), so PERF_EVENT_IOC_PERIOD then
 * takes a period in ns: "99" would mean 99 ns (clamped to 10 us: a 100 kHz interrupt
 * storm). The other events stay in frequency mode and take a frequency. */
static bool period_in_ns(const struct lupe_tracer *t)
{
	return t->event_type == PERF_TYPE_SOFTWARE &&
	       (t->event_config == PERF_COUNT_SW_CPU_CLOCK ||
		t->event_config == PERF_COUNT_SW_TASK_CLOCK);
}

static int set_period(const struct lupe_tracer *t, const struct tracer_cpu *c,
		      unsigned int hz)
{
	__u64 v = period_in_ns(t) ? 1000000000ULL / hz : hz;

	return ioctl(c->pfd, PERF_EVENT_IOC_PERIOD, &v) ? -errno : 0;
}

int lupe_tracer__set_frequency(struct lupe_tracer *t, unsigned int hz)
{
	unsigned long max_rate;
	size_t i, j;
	int err;

	if (!t || !hz)
		return -EINVAL;
	/* perf_event_open enforces the limit, but PERF_EVENT_IOC_PERIOD does not (6.18 takes
	 * 100 MHz, and the interrupt storm stalls the machine): check it here. */
	max_rate = max_sample_rate();
	if (max_rate && hz > max_rate) {
		pr_warn("sampling frequency %u Hz is above kernel.perf_event_max_sample_rate (%lu)",
			hz, max_rate);
		return -EINVAL;
	}
	for (i = 0; i < t->ncpus; i++) {
		err = set_period(t, &t->cpus[i], hz);
		if (err) {
			pr_warn("cpu %d: failed to set the sampling frequency to %u Hz: %s",
				t->cpus[i].cpu, hz, lupe_errstr(err));
			/* All CPUs sample at one frequency: undo. */
			for (j = 0; j < i; j++)
				set_period(t, &t->cpus[j], t->frequency);
			return err;
		}
	}
	t->frequency = hz;
	return 0;
}

unsigned int lupe_tracer__frequency(const struct lupe_tracer *t)
{
	return t ? t->frequency : 0;
}

static int ioctl_all(struct lupe_tracer *t, unsigned long req, const char *what)
{
	size_t i;
	int err = 0;

	if (!t)
		return -EINVAL;
	for (i = 0; i < t->ncpus; i++) {
		if (ioctl(t->cpus[i].pfd, req, 0)) {
			err = -errno;
			pr_warn("cpu %d: failed to %s the perf event: %s", t->cpus[i].cpu, what,
				lupe_errstr(err));
		}
	}
	return err;
}

int lupe_tracer__pause(struct lupe_tracer *t)
{
	return ioctl_all(t, PERF_EVENT_IOC_DISABLE, "disable");
}

int lupe_tracer__resume(struct lupe_tracer *t)
{
	return ioctl_all(t, PERF_EVENT_IOC_ENABLE, "enable");
}

/* ---- sampling policy ---------------------------------------------------------------- */

static void set_bss_u32(volatile __u32 *p, __u32 v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* Deletes every key of a map user space alone writes (any key size): always the first
 * key, so no walk cursor goes stale. */
static int map_clear(struct bpf_map *map)
{
	char key[64];
	__u32 i, max = bpf_map__max_entries(map);
	int fd = bpf_map__fd(map);

	if (bpf_map__key_size(map) > sizeof(key))
		return -EINVAL;
	for (i = 0; i <= max; i++) {
		if (bpf_map_get_next_key(fd, NULL, key))
			return errno == ENOENT ? 0 : -errno;
		if (bpf_map_delete_elem(fd, key) && errno != ENOENT)
			return -errno;
	}
	return -EBUSY;
}

int lupe_tracer__filter_comms(struct lupe_tracer *t, const char *const *globs, size_t n)
{
	int fd, err;
	size_t i;

	if (!t || (n && !globs))
		return -EINVAL;
	if (n > bpf_map__max_entries(t->skel->maps.comm_filter))
		return -E2BIG;
	for (i = 0; i < n; i++) {
		const char *star = strchr(globs[i], '*');
		size_t len = star ? (size_t)(star - globs[i]) : strlen(globs[i]);

		if ((star && star[1]) || strchr(globs[i], '?') || len >= LUPE_COMM_LEN)
			return -EINVAL;
	}
	/* Off while the set changes: a half-filled set would drop samples it should keep. */
	set_bss_u32(&t->skel->bss->filter_flags, t->skel->bss->filter_flags & ~LUPE_FILTER_COMM);
	fd = bpf_map__fd(t->skel->maps.comm_filter);
	err = map_clear(t->skel->maps.comm_filter);
	for (i = 0; !err && i < n; i++) {
		struct lupe_comm_key k = { 0 };
		const char *star = strchr(globs[i], '*');
		size_t len = star ? (size_t)(star - globs[i]) : strlen(globs[i]);
		__u8 one = 1;

		memcpy(k.comm, globs[i], len);
		/* An exact comm includes its NUL: "nginx" does not match "nginx2". */
		k.prefixlen = 8 * (__u32)(star ? len : len + 1);
		if (bpf_map_update_elem(fd, &k, &one, BPF_ANY))
			err = -errno;
	}
	if (err) {
		pr_warn("map 'comm_filter': failed to fill: %s", lupe_errstr(err));
		return err;
	}
	if (n)
		set_bss_u32(&t->skel->bss->filter_flags,
			    t->skel->bss->filter_flags | LUPE_FILTER_COMM);
	return 0;
}

int lupe_tracer__filter_cgroups(struct lupe_tracer *t, const __u64 *ids, size_t n)
{
	int fd, err;
	size_t i;

	if (!t || (n && !ids))
		return -EINVAL;
	if (n > bpf_map__max_entries(t->skel->maps.cgroup_filter))
		return -E2BIG;
	set_bss_u32(&t->skel->bss->filter_flags, t->skel->bss->filter_flags & ~LUPE_FILTER_CGROUP);
	fd = bpf_map__fd(t->skel->maps.cgroup_filter);
	err = map_clear(t->skel->maps.cgroup_filter);
	for (i = 0; !err && i < n; i++) {
		__u8 one = 1;

		if (bpf_map_update_elem(fd, &ids[i], &one, BPF_ANY))
			err = -errno;
	}
	if (err) {
		pr_warn("map 'cgroup_filter': failed to fill: %s", lupe_errstr(err));
		return err;
	}
	if (n)
		set_bss_u32(&t->skel->bss->filter_flags,
			    t->skel->bss->filter_flags | LUPE_FILTER_CGROUP);
	return 0;
}

static int set_rate(struct bpf_map *map, const void *key, unsigned int every)
{
	struct lupe_rate r = { .every = every };
	int fd = bpf_map__fd(map), err;

	/* 1 is a rate too (all samples), which the default must not override. */
	if (every == 0) {
		err = bpf_map_delete_elem(fd, key) ? -errno : 0;
		return err == -ENOENT ? 0 : err;
	}
	err = bpf_map_update_elem(fd, key, &r, BPF_ANY) ? -errno : 0;
	if (err == -E2BIG)
		pr_warn("map '%s': full (%u rates)", bpf_map__name(map), bpf_map__max_entries(map));
	else if (err)
		pr_warn("map '%s': failed to set a rate: %s", bpf_map__name(map), lupe_errstr(err));
	return err;
}

int lupe_tracer__rate_pid(struct lupe_tracer *t, pid_t pid, unsigned int every)
{
	__u32 key = pid;
	int err;

	if (!t || pid <= 0)
		return -EINVAL;
	err = set_rate(t->skel->maps.rates, &key, every);
	if (!err && every)
		set_bss_u32(&t->skel->bss->rates_active, 1);
	return err;
}

int lupe_tracer__rate_cgroup(struct lupe_tracer *t, __u64 cgroup_id, unsigned int every)
{
	int err;

	if (!t || !cgroup_id)
		return -EINVAL;
	err = set_rate(t->skel->maps.cgroup_rates, &cgroup_id, every);
	if (!err && every)
		set_bss_u32(&t->skel->bss->rates_active, 1);
	return err;
}

int lupe_tracer__rate_default(struct lupe_tracer *t, unsigned int every)
{
	if (!t)
		return -EINVAL;
	set_bss_u32(&t->skel->bss->default_every, every);
	/* Rates stay active once used: per-target entries may remain. */
	if (every > 1)
		set_bss_u32(&t->skel->bss->rates_active, 1);
	return 0;
}

static __u32 window_threshold(double fraction)
{
	if (!(fraction > 0))
		return 0;
	if (fraction >= 1)
		return UINT32_MAX;
	return (__u32)(fraction * 4294967296.0);
}

bool lupe_tracer_window_open(__u64 now, __u64 period_ns, double fraction, __u64 seed)
{
	__u64 k;

	if (!period_ns)
		return true;
	/* The same draw as window_open() in sampler.bpf.c. */
	k = now / period_ns ^ seed;
	k ^= k >> 30;
	k *= 0xbf58476d1ce4e5b9ULL;
	k ^= k >> 27;
	k *= 0x94d049bb133111ebULL;
	k ^= k >> 31;
	return (__u32)k <= window_threshold(fraction) && fraction > 0;
}

int lupe_tracer__window(struct lupe_tracer *t, __u64 period_ns, double fraction, __u64 seed)
{
	struct sampler_bpf__bss *bss;

	if (!t || fraction < 0 || fraction > 1 || fraction != fraction)
		return -EINVAL;
	bss = t->skel->bss;
	/* A zero fraction closes every window: threshold 0 still opens one draw in 2^32,
	 * so the period goes to the longest instead (never reached by a boot clock). */
	if (period_ns && !(fraction > 0)) {
		__atomic_store_n(&bss->window_threshold, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&bss->window_seed, seed, __ATOMIC_RELAXED);
		__atomic_store_n(&bss->window_period_ns, UINT64_MAX, __ATOMIC_RELEASE);
		return 0;
	}
	__atomic_store_n(&bss->window_threshold, window_threshold(fraction), __ATOMIC_RELAXED);
	__atomic_store_n(&bss->window_seed, seed, __ATOMIC_RELAXED);
	__atomic_store_n(&bss->window_period_ns, period_ns, __ATOMIC_RELEASE);
	return 0;
}

int lupe_tracer__report_all(struct lupe_tracer *t, bool on)
{
	if (!t)
		return -EINVAL;
	set_bss_u32(&t->skel->bss->report_all, on);
	return 0;
}

int lupe_tracer__target_remove_pid(struct lupe_tracer *t, pid_t pid)
{
	__u32 key = pid;
	int err;

	if (!t || pid <= 0)
		return -EINVAL;
	err = bpf_map_delete_elem(bpf_map__fd(t->skel->maps.targets), &key) ? -errno : 0;
	return err == -ENOENT ? 0 : err;
}

bool lupe_tracer__unwinding(const struct lupe_tracer *t)
{
	return t && t->unwind;
}

struct lupe_ebpf_handler *lupe_tracer__ebpf_handler(struct lupe_tracer *t)
{
	struct lupe_unwind_map_fds fds;
	struct lupe_unwind_backend *be;
	struct lupe_ebpf_handler *h;

	if (!t || !t->unwind) {
		errno = EINVAL;
		return NULL;
	}
	/* The handler owns the slot chunks: two would fill the same outer slots. */
	if (t->handler_made) {
		errno = EBUSY;
		return NULL;
	}
	fds = (struct lupe_unwind_map_fds){
		.pids = bpf_map__fd(t->skel->maps.unwind_pids),
		.mappings = bpf_map__fd(t->skel->maps.unwind_mappings),
		.files = bpf_map__fd(t->skel->maps.unwind_files),
		.pages = bpf_map__fd(t->skel->maps.unwind_pages),
		.rules = bpf_map__fd(t->skel->maps.unwind_rules),
		.tables = bpf_map__fd(t->skel->maps.unwind_tables),
	};
	be = lupe_unwind_backend_bpf_new(&fds);
	if (!be)
		return NULL;
	{
		LUPE_OPTS(lupe_stackdeltas_opts, o, .budget_bytes = t->unwind_budget,
			  .max_pages = t->unwind_pages, .max_chunks = t->unwind_chunks);
		h = lupe_stackdeltas_new(be, &o);
	}
	if (h)
		t->handler_made = true;
	return h;
}

/* ---- APM correlation ------------------------------------------------------------------- */

int lupe_tracer__apm_map_fd(struct lupe_tracer *t)
{
	int fd;

	if (!t)
		return -EINVAL;
	fd = fcntl(bpf_map__fd(t->skel->maps.apm_procs), F_DUPFD_CLOEXEC, 0);
	return fd < 0 ? -errno : fd;
}

int lupe_tracer_apm_set(int map_fd, pid_t pid, __s64 tls_offset)
{
	struct lupe_apm_proc v = { .tls_offset = tls_offset };
	__u32 key = (__u32)pid;

	if (map_fd < 0 || pid <= 0)
		return -EINVAL;
	return bpf_map_update_elem(map_fd, &key, &v, BPF_ANY) ? -errno : 0;
}

int lupe_tracer_apm_delete(int map_fd, pid_t pid)
{
	__u32 key = (__u32)pid;

	if (map_fd < 0 || pid <= 0)
		return -EINVAL;
	return bpf_map_delete_elem(map_fd, &key) ? -errno : 0;
}

int lupe_tracer__apm_counters(struct lupe_tracer *t, struct lupe_apm_counters *out)
{
	struct lupe_apm_counters *percpu;
	__u32 zero = 0;
	int cpu, err = 0;

	if (!t || !out)
		return -EINVAL;
	percpu = calloc(t->nr_possible, sizeof(*percpu));
	if (!percpu)
		return -ENOMEM;
	memset(out, 0, sizeof(*out));
	if (bpf_map_lookup_elem(bpf_map__fd(t->skel->maps.apm_counters), &zero, percpu)) {
		err = -errno;
		pr_warn("map 'apm_counters': failed to read: %s", lupe_errstr(err));
		goto out;
	}
	for (cpu = 0; cpu < t->nr_possible; cpu++) {
		out->read += percpu[cpu].read;
		out->no_tx += percpu[cpu].no_tx;
		out->faults += percpu[cpu].faults;
	}
out:
	free(percpu);
	return err;
}
