#define LUPE_LOG_PREFIX "procmgr: "
#include "procmgr.h"

#include "hashmap.h"
#include "log.h"
#include "procmaps.h"
#include "apm.h"
#include "convert.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_ELF_CACHE 16384
/* The vDSO has no inode; this key cannot collide with a real (device, inode) pair. */
#define VDSO_DEVICE UINT64_MAX

/* A file loaded for at least one live or exit-pending mapping. */
struct exe {
	uint64_t host;
	struct lupe_file_id id;
	int refcount;           /* mappings holding it, over every process */
	bool deltas_loaded;
	char path[];
};

/* What a (device, inode) is, cached so that a file mapped by many processes is opened,
 * hashed and parsed once. err < 0 is a negative entry. */
struct elf_entry {
	struct lupe_disk_id key;
	struct timespec mtime;
	off_t size;
	int err;
	struct lupe_file_id id;
	struct lupe_elfinfo elf;
	uint64_t last_used;
};

struct pm_map {
	struct lupe_mapping m;
	struct exe *exe;        /* holds one reference */
	bool deleted;
	char *path;
};

struct anon_region {
	uint64_t start, end;
};

struct process {
	pid_t pid;
	uint64_t exit_ktime;    /* 0 while alive */
	struct pm_map *maps;    /* sorted by vaddr */
	size_t nmaps;
	struct anon_region *anon;
	size_t nanon;
	struct process *next;   /* the exited list */
};

struct synth {
	struct lupe_interval_data data;
};

struct lupe_procmgr {
	pthread_mutex_t lock;
	struct lupe_ebpf_handler *ebpf;
	struct lupe_fileid_mapper *file_ids;
	struct lupe_symbol_reporter *reporter;
	struct lupe_stackdelta_provider *deltas;
	bool filter_error_frames;
	char proc_root[PATH_MAX];
	size_t elf_cache_max;
	uint64_t elf_clock;
	uint64_t monitor_interval_ns, last_sweep;

	struct lupe_hashmap *live;      /* {pid, 0} -> process */
	struct process *exited;         /* exited, newest first */
	struct lupe_hashmap *exes;      /* {host, 0} -> exe */
	struct lupe_hashmap *elf_cache; /* {dev, ino} -> elf_entry */
	struct lupe_hashmap *synth;     /* {host, 0} -> synth */
	struct lupe_procmgr_stats st;
	struct lupe_apm *apm;           /* APM agents (lupe_procmgr__set_apm), borrowed */
};

uint64_t lupe_ktime_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct lupe_key pid_key(pid_t pid)
{
	return (struct lupe_key){ (uint64_t)(uint32_t)pid, 0 };
}

static struct lupe_key host_key(uint64_t host)
{
	return (struct lupe_key){ host, 0 };
}

static void ebpf_result(struct lupe_procmgr *pm, int err, const char *what, pid_t pid)
{
	if (err) {
		pm->st.ebpf_errors++;
		pr_debug("pid %d: %s failed: %s", pid, what, lupe_errstr(err));
	}
}

/* ---- executables ---------------------------------------------------------------- */

static void free_interval_data(struct lupe_interval_data *d)
{
	free(d->deltas);
	d->deltas = NULL;
	d->count = 0;
}

static int copy_interval_data(const struct lupe_interval_data *src, struct lupe_interval_data *dst)
{
	dst->count = src->count;
	dst->deltas = NULL;
	if (!src->count)
		return 0;
	dst->deltas = malloc(src->count * sizeof(*src->deltas));
	if (!dst->deltas)
		return -ENOMEM;
	memcpy(dst->deltas, src->deltas, src->count * sizeof(*src->deltas));
	return 0;
}

/* Synthetic data wins; else the provider; none at all is not an error (frame pointers). */
static void load_deltas(struct lupe_procmgr *pm, struct exe *e, const struct lupe_exe_info *info)
{
	struct synth *s = lupe_hashmap__get(pm->synth, host_key(e->host));
	struct lupe_interval_data data = { 0 };
	int err = -ENOENT;

	if (s) {
		err = pm->ebpf->ops->load_deltas(pm->ebpf, e->host, &s->data);
		ebpf_result(pm, err, "load synthetic deltas", 0);
		e->deltas_loaded = err == 0;
		return;
	}
	if (pm->deltas && info)
		err = pm->deltas->ops->get_interval_data(pm->deltas, info, &data);
	if (err == -ENOENT) {
		pm->st.no_deltas++;
		return;
	}
	if (err) {
		pm->st.delta_errors++;
		pr_debug("'%s': no stack deltas: %s", e->path, lupe_errstr(err));
		return;
	}
	err = pm->ebpf->ops->load_deltas(pm->ebpf, e->host, &data);
	ebpf_result(pm, err, "load deltas", 0);
	e->deltas_loaded = err == 0;
	free_interval_data(&data);
}

static struct exe *exe_get(struct lupe_procmgr *pm, const struct lupe_exe_info *info)
{
	struct exe *e = lupe_hashmap__get(pm->exes, host_key(info->host_file_id));
	size_t plen;

	if (e)
		return e;
	plen = strlen(info->path) + 1;
	e = calloc(1, sizeof(*e) + plen);
	if (!e)
		return NULL;
	e->host = info->host_file_id;
	e->id = info->file_id;
	memcpy(e->path, info->path, plen);
	if (lupe_hashmap__set(pm->exes, host_key(e->host), e, NULL)) {
		free(e);
		return NULL;
	}
	if (pm->file_ids->ops->set(pm->file_ids, e->host, e->id))
		pr_debug("'%s': file-ID mapper full", e->path);
	load_deltas(pm, e, info);
	if (pm->reporter)
		pm->reporter->ops->executable_loaded(pm->reporter, info);
	pm->st.executables_loaded_total++;
	return e;
}

static void exe_put(struct lupe_procmgr *pm, struct exe *e)
{
	if (!e || --e->refcount > 0)
		return;
	if (e->deltas_loaded)
		ebpf_result(pm, pm->ebpf->ops->unload_deltas(pm->ebpf, e->host), "unload deltas", 0);
	if (pm->reporter)
		pm->reporter->ops->executable_unloaded(pm->reporter, e->host);
	lupe_hashmap__delete(pm->exes, host_key(e->host));
	pm->st.executables_unloaded_total++;
	free(e);
}

/* ---- the ELF cache -------------------------------------------------------------- */

/* Drops the least recently used half when full: an O(n) sweep, rare and bounded. */
static void elf_cache_trim(struct lupe_procmgr *pm)
{
	size_t pos = 0, n = lupe_hashmap__count(pm->elf_cache);
	uint64_t cutoff = pm->elf_clock - n / 2;
	struct lupe_key k;
	void *v;

	if (n < pm->elf_cache_max)
		return;
	while (lupe_hashmap__next(pm->elf_cache, &pos, &k, &v)) {
		struct elf_entry *en = v;

		if (en->last_used <= cutoff) {
			lupe_hashmap__delete(pm->elf_cache, k);
			free(en);
		}
	}
}

/* A file descriptor on a regular file only: a FIFO or a device planted where a mapped file
 * was would block a read, or be no ELF file at all. */
static int regular_or_close(int fd)
{
	struct stat st;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
		return fd;
	close(fd);
	return -EINVAL;
}

/* PATH as the process sees it, resolved inside its root: openat2(RESOLVE_IN_ROOT) keeps
 * absolute symlinks and ".." within /proc/PID/root (a process must not lead lupe to the
 * host's files), and refuses /proc magic links. Without openat2, only a final component
 * that is not a symlink is accepted (O_NOFOLLOW). */
static int open_in_root(const char *root, const char *path)
{
	struct open_how how = { .flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
				.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
	int dfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), fd, err;

	if (dfd < 0)
		return -errno;
	fd = (int)syscall(SYS_openat2, dfd, path, &how, sizeof(how));
	if (fd < 0 && errno == ENOSYS)
		fd = openat(dfd, path[0] == '/' ? path + 1 : path,
			    O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW);
	err = errno;
	close(dfd);
	errno = err;
	return regular_or_close(fd);
}

static int open_mapped_file(struct lupe_procmgr *pm, pid_t pid, const struct lupe_procmap *pmap)
{
	char path[PATH_MAX * 2];
	int fd;

	/* map_files works for deleted files and other mount namespaces. */
	snprintf(path, sizeof(path), "%s/%d/map_files/%lx-%lx", pm->proc_root, pid,
		 (unsigned long)pmap->start, (unsigned long)pmap->end);
	fd = regular_or_close(open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
	if (fd >= 0)
		return fd;
	snprintf(path, sizeof(path), "%s/%d/root", pm->proc_root, pid);
	return open_in_root(path, pmap->path);
}

static int read_vdso(pid_t pid, const struct lupe_procmap *pmap, void **out, size_t *len)
{
	size_t n = pmap->end - pmap->start;
	struct iovec local, remote;
	void *buf;
	ssize_t got;

	if (n == 0 || n > (16u << 20))
		return -EINVAL;
	buf = malloc(n);
	if (!buf)
		return -ENOMEM;
	local = (struct iovec){ buf, n };
	remote = (struct iovec){ (void *)(uintptr_t)pmap->start, n };
	got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
	if (got != (ssize_t)n) {
		int err = got < 0 ? -errno : -EIO;

		free(buf);
		return err;
	}
	*out = buf;
	*len = n;
	return 0;
}

/* Resolves a mapping to its cache entry; on a miss or a changed file, opens, hashes and
 * parses it. *fd_out receives the open file when one was opened (caller closes). */
static struct elf_entry *elf_lookup(struct lupe_procmgr *pm, pid_t pid,
				    const struct lupe_procmap *pmap, int *fd_out, int *err_out)
{
	struct lupe_disk_id key;
	struct elf_entry *en;
	struct stat st;
	int fd, err;

	*fd_out = -1;
	key.device = makedev(pmap->dev_major, pmap->dev_minor);
	key.inode = pmap->inode;
	en = lupe_hashmap__get(pm->elf_cache, (struct lupe_key){ key.device, key.inode });

	fd = open_mapped_file(pm, pid, pmap);
	if (fd < 0) {
		pm->st.file_open_errors++;
		*err_out = fd;
		pr_debug("pid %d: cannot open '%s': %s", pid, pmap->path, lupe_errstr(fd));
		return NULL;
	}
	if (fstat(fd, &st) < 0) {
		err = -errno;
		close(fd);
		pm->st.file_open_errors++;
		*err_out = err;
		return NULL;
	}
	if (en && en->size == st.st_size && en->mtime.tv_sec == st.st_mtim.tv_sec &&
	    en->mtime.tv_nsec == st.st_mtim.tv_nsec) {
		pm->st.elf_cache_hits++;
		en->last_used = ++pm->elf_clock;
		*fd_out = fd;
		return en;
	}
	pm->st.elf_cache_misses++;
	if (!en) {
		elf_cache_trim(pm);
		en = calloc(1, sizeof(*en));
		if (!en || lupe_hashmap__set(pm->elf_cache, (struct lupe_key){ key.device, key.inode },
					     en, NULL)) {
			free(en);
			close(fd);
			*err_out = -ENOMEM;
			return NULL;
		}
	}
	en->key = key;
	en->mtime = st.st_mtim;
	en->size = st.st_size;
	en->last_used = ++pm->elf_clock;
	en->err = lupe_elfinfo_from_fd(fd, &en->elf);
	if (en->err) {
		pm->st.elf_errors++;
		pr_debug("'%s': not a usable ELF file: %s", pmap->path, lupe_errstr(en->err));
	} else {
		en->err = lupe_file_id_from_fd(fd, &en->id);
		if (en->err)
			pm->st.hash_errors++;
	}
	*fd_out = fd;
	return en;
}

static struct elf_entry *vdso_lookup(struct lupe_procmgr *pm, pid_t pid,
				     const struct lupe_procmap *pmap, void **image, size_t *len,
				     int *err_out)
{
	struct lupe_key k = { VDSO_DEVICE, pmap->end - pmap->start };
	struct elf_entry *en = lupe_hashmap__get(pm->elf_cache, k);
	int err;

	*image = NULL;
	err = read_vdso(pid, pmap, image, len);
	if (err) {
		pm->st.file_open_errors++;
		*err_out = err;
		return NULL;
	}
	if (en) {
		pm->st.elf_cache_hits++;
		en->last_used = ++pm->elf_clock;
		return en;
	}
	pm->st.elf_cache_misses++;
	en = calloc(1, sizeof(*en));
	if (!en || lupe_hashmap__set(pm->elf_cache, k, en, NULL)) {
		free(en);
		free(*image);
		*image = NULL;
		*err_out = -ENOMEM;
		return NULL;
	}
	en->key = (struct lupe_disk_id){ k.a, k.b };
	en->last_used = ++pm->elf_clock;
	lupe_file_id_from_bytes(*image, *len, &en->id);
	en->err = lupe_elfinfo_from_mem(*image, *len, &en->elf);
	if (en->err)
		pm->st.elf_errors++;
	return en;
}

/* ---- processes ------------------------------------------------------------------ */

static void process_release_maps(struct lupe_procmgr *pm, struct process *p)
{
	size_t i;

	for (i = 0; i < p->nmaps; i++) {
		exe_put(pm, p->maps[i].exe);
		free(p->maps[i].path);
	}
	free(p->maps);
	free(p->anon);
	p->maps = NULL;
	p->anon = NULL;
	p->nmaps = p->nanon = 0;
}

static void process_free(struct lupe_procmgr *pm, struct process *p)
{
	if (!p)
		return;
	process_release_maps(pm, p);
	free(p);
}

static bool same_mapping(const struct pm_map *old, const struct lupe_procmap *n)
{
	if (old->m.vaddr != n->start || old->m.length != n->end - n->start ||
	    old->m.file_offset != n->file_offset)
		return false;
	if (n->kind == LUPE_MAP_VDSO)
		return old->m.device == VDSO_DEVICE;
	return old->m.device == makedev(n->dev_major, n->dev_minor) && old->m.inode == n->inode;
}

/* Builds the pm_map for a new mapping; returns 0, or a negative errno (skip it). */
static int new_mapping(struct lupe_procmgr *pm, pid_t pid, const struct lupe_procmap *pmap,
		       struct pm_map *out)
{
	struct lupe_exe_info info = { 0 };
	struct elf_entry *en;
	void *image = NULL;
	size_t image_len = 0;
	uint64_t elf_vaddr;
	int fd = -1, err = 0;
	struct exe *e;

	if (pmap->kind == LUPE_MAP_VDSO)
		en = vdso_lookup(pm, pid, pmap, &image, &image_len, &err);
	else
		en = elf_lookup(pm, pid, pmap, &fd, &err);
	if (!en)
		goto out;
	if (en->err) {
		err = en->err;
		goto out;
	}
	if (lupe_elfinfo_offset_to_vaddr(&en->elf, pmap->file_offset, &elf_vaddr)) {
		/* Mapped executable at an offset no executable segment covers: not code. */
		pm->st.elf_errors++;
		err = -ENOEXEC;
		goto out;
	}
	info.file_id = en->id;
	info.host_file_id = lupe_file_id_host(en->id);
	info.path = pmap->kind == LUPE_MAP_VDSO ? "[vdso]" : pmap->path;
	info.elf = &en->elf;
	info.fd = fd;
	info.image = image;
	info.image_len = image_len;
	info.vdso = pmap->kind == LUPE_MAP_VDSO;
	e = exe_get(pm, &info);
	if (!e) {
		err = -ENOMEM;
		goto out;
	}
	out->path = strdup(info.path);
	if (!out->path) {
		if (e->refcount == 0) {
			e->refcount = 1;
			exe_put(pm, e);
		}
		err = -ENOMEM;
		goto out;
	}
	e->refcount++;
	out->exe = e;
	out->deleted = pmap->deleted;
	out->m.file_id = en->id;
	out->m.vaddr = pmap->start;
	out->m.length = pmap->end - pmap->start;
	out->m.bias = pmap->start - elf_vaddr;
	out->m.file_offset = pmap->file_offset;
	out->m.device = en->key.device;
	out->m.inode = en->key.inode;
out:
	if (fd >= 0)
		close(fd);
	free(image);
	return err;
}

static struct process *process_new(struct lupe_procmgr *pm, pid_t pid)
{
	struct process *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->pid = pid;
	if (lupe_hashmap__set(pm->live, pid_key(pid), p, NULL)) {
		free(p);
		return NULL;
	}
	ebpf_result(pm, pm->ebpf->ops->new_pid(pm->ebpf, pid), "new pid", pid);
	pm->st.processes++;
	return p;
}

/* The process leaves the live table now; BPF forgets it now (a reused PID must not hit
 * stale entries); the host keeps its mappings until symbolization_complete. */
static void process_exit(struct lupe_procmgr *pm, struct process *p, uint64_t ktime)
{
	size_t i;

	lupe_hashmap__delete(pm->live, pid_key(p->pid));
	for (i = 0; i < p->nmaps; i++)
		ebpf_result(pm, pm->ebpf->ops->delete_mapping(pm->ebpf, p->pid, &p->maps[i].m),
			    "delete mapping", p->pid);
	ebpf_result(pm, pm->ebpf->ops->delete_pid(pm->ebpf, p->pid), "delete pid", p->pid);
	pm->st.mappings -= p->nmaps;
	pm->st.anon_regions -= p->nanon;
	pm->st.processes--;
	pm->st.exited_pending++;
	p->exit_ktime = ktime ? ktime : lupe_ktime_now();
	p->next = pm->exited;
	pm->exited = p;
}

static int sync_locked(struct lupe_procmgr *pm, pid_t pid)
{
	struct lupe_procmaps pmaps = { 0 };
	struct process *p = lupe_hashmap__get(pm->live, pid_key(pid));
	struct pm_map *maps = NULL;
	struct anon_region *anon = NULL;
	bool *fresh = NULL;
	size_t i, j = 0, nmaps = 0, nanon = 0, nfile = 0;
	int err;

	pm->st.sync_attempts++;
	err = lupe_procmaps_read(pm->proc_root, pid, &pmaps);
	pm->st.maps_malformed += pmaps.malformed;
	if (err == -ESRCH || err == -ENOENT) {
		pm->st.sync_esrch++;
		if (p)
			process_exit(pm, p, 0);
		err = -ESRCH;
		goto out;
	}
	if (err == -EPERM || err == -EACCES) {
		pm->st.sync_eperm++;
		pr_debug("pid %d: cannot read maps: %s", pid, lupe_errstr(err));
		err = -EPERM;
		goto out;
	}
	if (err)
		goto out;

	for (i = 0; i < pmaps.count; i++) {
		enum lupe_procmap_kind k = pmaps.maps[i].kind;

		if (k == LUPE_MAP_FILE || k == LUPE_MAP_VDSO)
			nfile++;
		else if (k == LUPE_MAP_ANON || k == LUPE_MAP_MEMFD)
			nanon++;
	}
	if (nfile == 0) {
		/* A kernel thread, a zombie, or a process between exec and its first map: a
		 * tracked process that lost every mapping is gone for our purposes. */
		pm->st.sync_empty++;
		if (p) {
			process_exit(pm, p, 0);
			err = -ESRCH;
		}
		goto out;
	}
	maps = calloc(nfile, sizeof(*maps));
	anon = nanon ? calloc(nanon, sizeof(*anon)) : NULL;
	fresh = calloc(nfile, sizeof(*fresh));
	if (!maps || !fresh || (nanon && !anon)) {
		err = -ENOMEM;
		goto out;
	}
	if (!p) {
		p = process_new(pm, pid);
		if (!p) {
			err = -ENOMEM;
			goto out;
		}
	}

	/* Both lists are sorted by address: walk them together. Unchanged mappings move
	 * over with their reference; the rest of the old list is released after. */
	nanon = 0;
	for (i = 0; i < pmaps.count; i++) {
		const struct lupe_procmap *pmap = &pmaps.maps[i];

		if (pmap->kind == LUPE_MAP_ANON || pmap->kind == LUPE_MAP_MEMFD) {
			anon[nanon++] = (struct anon_region){ pmap->start, pmap->end };
			continue;
		}
		if (pmap->kind != LUPE_MAP_FILE && pmap->kind != LUPE_MAP_VDSO)
			continue;
		while (j < p->nmaps && p->maps[j].m.vaddr < pmap->start)
			j++;
		if (j < p->nmaps && same_mapping(&p->maps[j], pmap)) {
			maps[nmaps++] = p->maps[j];
			p->maps[j].exe = NULL;
			p->maps[j].path = NULL;
			j++;
			continue;
		}
		if (new_mapping(pm, pid, pmap, &maps[nmaps]) == 0)
			fresh[nmaps++] = true;
	}
	for (j = 0; j < p->nmaps; j++) {
		if (!p->maps[j].exe)
			continue;
		ebpf_result(pm, pm->ebpf->ops->delete_mapping(pm->ebpf, pid, &p->maps[j].m),
			    "delete mapping", pid);
		exe_put(pm, p->maps[j].exe);
		free(p->maps[j].path);
	}
	/* Adds after deletes: BPF deletes by range, and a new mapping may overlap one removed. */
	for (i = 0; i < nmaps; i++)
		if (fresh[i])
			ebpf_result(pm, pm->ebpf->ops->add_mapping(pm->ebpf, pid, &maps[i].m),
				    "add mapping", pid);
	pm->st.mappings += nmaps - p->nmaps;
	pm->st.anon_regions += nanon - p->nanon;
	free(p->maps);
	free(p->anon);
	p->maps = maps;
	p->nmaps = nmaps;
	p->anon = anon;
	p->nanon = nanon;
	maps = NULL;
	anon = NULL;
out:
	free(maps);
	free(anon);
	free(fresh);
	lupe_procmaps_release(&pmaps);
	return err;
}

int lupe_procmgr__synchronize_process(struct lupe_procmgr *pm, pid_t pid)
{
	int err;

	if (pid <= 0)
		return -EINVAL;
	pthread_mutex_lock(&pm->lock);
	err = sync_locked(pm, pid);
	pthread_mutex_unlock(&pm->lock);
	return err;
}

bool lupe_procmgr__pid_exit(struct lupe_procmgr *pm, pid_t pid, uint64_t ktime)
{
	struct process *p;

	pthread_mutex_lock(&pm->lock);
	p = lupe_hashmap__get(pm->live, pid_key(pid));
	if (p)
		process_exit(pm, p, ktime);
	pthread_mutex_unlock(&pm->lock);
	return p != NULL;
}

/* Alive means not gone and not a zombie: a zombie keeps its PID but has no mappings. */
static bool pid_alive(const char *proc_root, pid_t pid)
{
	char path[PATH_MAX + 32], buf[512], *paren;
	ssize_t n;
	int fd;

	if (kill(pid, 0) < 0 && errno == ESRCH)
		return false;
	snprintf(path, sizeof(path), "%s/%d/stat", proc_root, pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno != ENOENT && errno != ESRCH;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return n < 0 ? errno != ESRCH : false;
	buf[n] = '\0';
	/* "pid (comm) S ...": comm may hold anything, so find the last ')'. */
	paren = strrchr(buf, ')');
	return !(paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'));
}

int lupe_procmgr__cleanup_pids(struct lupe_procmgr *pm)
{
	size_t pos = 0;
	struct lupe_key k;
	void *v;
	int n = 0;

	pthread_mutex_lock(&pm->lock);
	while (lupe_hashmap__next(pm->live, &pos, &k, &v)) {
		struct process *p = v;

		if (!pid_alive(pm->proc_root, p->pid)) {
			process_exit(pm, p, 0);
			n++;
		}
	}
	pthread_mutex_unlock(&pm->lock);
	return n;
}

int lupe_procmgr__tick(struct lupe_procmgr *pm, uint64_t now)
{
	if (now - pm->last_sweep < pm->monitor_interval_ns)
		return 0;
	pm->last_sweep = now;
	return lupe_procmgr__cleanup_pids(pm);
}

int lupe_procmgr__symbolization_complete(struct lupe_procmgr *pm, uint64_t ktime)
{
	struct process **pp, *p;
	int n = 0;

	pthread_mutex_lock(&pm->lock);
	for (pp = &pm->exited; (p = *pp);) {
		if (p->exit_ktime <= ktime) {
			*pp = p->next;
			process_free(pm, p);
			pm->st.exited_pending--;
			n++;
		} else {
			pp = &p->next;
		}
	}
	pthread_mutex_unlock(&pm->lock);
	return n;
}

int lupe_procmgr__add_synth_interval_data(struct lupe_procmgr *pm, uint64_t host_file_id,
					  const struct lupe_interval_data *data)
{
	struct synth *s, *old = NULL;
	struct exe *e;
	int err;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	err = copy_interval_data(data, &s->data);
	if (err) {
		free(s);
		return err;
	}
	pthread_mutex_lock(&pm->lock);
	err = lupe_hashmap__set(pm->synth, host_key(host_file_id), s, (void **)&old);
	if (err) {
		free_interval_data(&s->data);
		free(s);
		goto out;
	}
	if (old) {
		free_interval_data(&old->data);
		free(old);
	}
	e = lupe_hashmap__get(pm->exes, host_key(host_file_id));
	if (e) {
		if (e->deltas_loaded)
			ebpf_result(pm, pm->ebpf->ops->unload_deltas(pm->ebpf, e->host),
				    "unload deltas", 0);
		e->deltas_loaded = false;
		load_deltas(pm, e, NULL);
	}
out:
	pthread_mutex_unlock(&pm->lock);
	return err;
}

/* The process a trace of (pid, ktime) belongs to: one that exited at or after ktime
 * (the oldest such), else the live one, else (ktime 0 only) the newest exited. */
static struct process *process_at(struct lupe_procmgr *pm, pid_t pid, uint64_t ktime)
{
	struct process *p, *best = NULL, *newest_exited = NULL;

	for (p = pm->exited; p; p = p->next) {
		if (p->pid != pid)
			continue;
		if (!newest_exited)
			newest_exited = p;
		if (ktime && p->exit_ktime >= ktime && (!best || p->exit_ktime < best->exit_ktime))
			best = p;
	}
	if (best)
		return best;
	p = lupe_hashmap__get(pm->live, pid_key(pid));
	/* A process that exited before ktime cannot have produced the trace. */
	return p ? p : ktime ? NULL : newest_exited;
}

static const struct pm_map *map_at(const struct process *p, uint64_t addr)
{
	size_t lo = 0, hi = p->nmaps;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (p->maps[mid].m.vaddr <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	lo--;
	if (addr - p->maps[lo].m.vaddr >= p->maps[lo].m.length)
		return NULL;
	return &p->maps[lo];
}

int lupe_procmgr__find_mapping(struct lupe_procmgr *pm, pid_t pid, uint64_t addr, uint64_t ktime,
			       struct lupe_mapping *out, char *path, size_t pathlen)
{
	const struct pm_map *m = NULL;
	struct process *p;

	pthread_mutex_lock(&pm->lock);
	p = process_at(pm, pid, ktime);
	if (p)
		m = map_at(p, addr);
	if (m) {
		*out = m->m;
		if (path && pathlen)
			snprintf(path, pathlen, "%s", m->path);
	}
	pthread_mutex_unlock(&pm->lock);
	return m ? 0 : -ENOENT;
}

int lupe_procmgr__find_mapping_by_file(struct lupe_procmgr *pm, pid_t pid, uint64_t host_file_id,
				       uint64_t addr, uint64_t ktime, struct lupe_mapping *out)
{
	struct process *p;
	size_t i;
	int err = -ENOENT;

	pthread_mutex_lock(&pm->lock);
	p = process_at(pm, pid, ktime);
	for (i = 0; p && i < p->nmaps; i++) {
		const struct lupe_mapping *m = &p->maps[i].m;
		uint64_t a = addr + m->bias;

		if (lupe_file_id_host(m->file_id) == host_file_id && m->vaddr <= a &&
		    a <= m->vaddr + m->length) {
			*out = *m;
			err = 0;
			break;
		}
	}
	pthread_mutex_unlock(&pm->lock);
	return err;
}

ssize_t lupe_procmgr__mappings(struct lupe_procmgr *pm, pid_t pid, struct lupe_mapping_view **out)
{
	struct lupe_mapping_view *v;
	struct process *p;
	size_t i, strings = 0;
	ssize_t ret;
	char *s;

	*out = NULL;
	pthread_mutex_lock(&pm->lock);
	p = process_at(pm, pid, 0);
	if (!p) {
		ret = -ENOENT;
		goto out;
	}
	for (i = 0; i < p->nmaps; i++)
		strings += strlen(p->maps[i].path) + 1;
	v = malloc(p->nmaps * sizeof(*v) + strings + 1);
	if (!v) {
		ret = -ENOMEM;
		goto out;
	}
	s = (char *)(v + p->nmaps);
	for (i = 0; i < p->nmaps; i++) {
		size_t l = strlen(p->maps[i].path) + 1;

		v[i].m = p->maps[i].m;
		v[i].deleted = p->maps[i].deleted;
		v[i].path = memcpy(s, p->maps[i].path, l);
		s += l;
	}
	*out = v;
	ret = (ssize_t)p->nmaps;
out:
	pthread_mutex_unlock(&pm->lock);
	return ret;
}

ssize_t lupe_procmgr__processes(struct lupe_procmgr *pm, pid_t **out, bool **exited)
{
	size_t n, i = 0, pos = 0;
	struct process *p;
	struct lupe_key k;
	void *v;

	pthread_mutex_lock(&pm->lock);
	n = lupe_hashmap__count(pm->live) + pm->st.exited_pending;
	*out = malloc((n + 1) * sizeof(**out));
	*exited = malloc((n + 1) * sizeof(**exited));
	if (!*out || !*exited) {
		free(*out);
		free(*exited);
		*out = NULL;
		*exited = NULL;
		pthread_mutex_unlock(&pm->lock);
		return -ENOMEM;
	}
	while (lupe_hashmap__next(pm->live, &pos, &k, &v)) {
		(*out)[i] = ((struct process *)v)->pid;
		(*exited)[i++] = false;
	}
	for (p = pm->exited; p && i < n; p = p->next) {
		(*out)[i] = p->pid;
		(*exited)[i++] = true;
	}
	pthread_mutex_unlock(&pm->lock);
	return (ssize_t)i;
}

bool lupe_procmgr__file_id(struct lupe_procmgr *pm, uint64_t host_file_id, struct lupe_file_id *out)
{
	bool ok;

	pthread_mutex_lock(&pm->lock);
	ok = pm->file_ids->ops->get(pm->file_ids, host_file_id, out);
	pthread_mutex_unlock(&pm->lock);
	return ok;
}

struct lupe_fileid_mapper *lupe_procmgr__file_id_mapper(struct lupe_procmgr *pm)
{
	return pm->file_ids;
}

struct lupe_ebpf_handler *lupe_procmgr__ebpf(struct lupe_procmgr *pm)
{
	return pm->ebpf;
}

bool lupe_procmgr__filter_error_frames(const struct lupe_procmgr *pm)
{
	return pm->filter_error_frames;
}

int lupe_procmgr__exe_refcount(struct lupe_procmgr *pm, uint64_t host_file_id)
{
	struct exe *e;
	int rc;

	pthread_mutex_lock(&pm->lock);
	e = lupe_hashmap__get(pm->exes, host_key(host_file_id));
	rc = e ? e->refcount : 0;
	pthread_mutex_unlock(&pm->lock);
	return rc;
}

static size_t process_mem(const struct process *p)
{
	size_t i, m = sizeof(*p) + p->nmaps * sizeof(*p->maps) + p->nanon * sizeof(*p->anon);

	for (i = 0; i < p->nmaps; i++)
		m += strlen(p->maps[i].path) + 1;
	return m;
}

void lupe_procmgr__stats(struct lupe_procmgr *pm, struct lupe_procmgr_stats *out)
{
	size_t pos = 0, mem;
	struct process *p;
	struct lupe_key k;
	void *v;

	pthread_mutex_lock(&pm->lock);
	mem = sizeof(*pm) + lupe_hashmap__mem(pm->live) + lupe_hashmap__mem(pm->exes) +
	      lupe_hashmap__mem(pm->elf_cache) + lupe_hashmap__mem(pm->synth) +
	      lupe_hashmap__count(pm->elf_cache) * sizeof(struct elf_entry);
	while (lupe_hashmap__next(pm->live, &pos, &k, &v))
		mem += process_mem(v);
	for (p = pm->exited; p; p = p->next)
		mem += process_mem(p);
	pos = 0;
	while (lupe_hashmap__next(pm->exes, &pos, &k, &v))
		mem += sizeof(struct exe) + strlen(((struct exe *)v)->path) + 1;
	pm->st.executables = lupe_hashmap__count(pm->exes);
	pm->st.memory_bytes = mem;
	*out = pm->st;
	pthread_mutex_unlock(&pm->lock);
}

/* ---- construction --------------------------------------------------------------- */

#define OPT(opts, field, def) \
	((opts) && (opts)->sz > offsetof(typeof(*(opts)), field) ? (opts)->field : (def))

struct lupe_procmgr *lupe_procmgr__new(const struct lupe_procmgr_opts *opts)
{
	struct lupe_procmgr *pm = calloc(1, sizeof(*pm));
	const char *root = OPT(opts, proc_root, NULL);
	int err = -ENOMEM;

	if (!pm) {
		/* The handlers are ours even on failure: release them. */
		if (opts && opts->ebpf)
			opts->ebpf->ops->free(opts->ebpf);
		lupe_fileid_mapper_free(opts ? opts->file_ids : NULL);
		if (opts && opts->reporter)
			opts->reporter->ops->free(opts->reporter);
		if (opts && opts->deltas)
			opts->deltas->ops->free(opts->deltas);
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_init(&pm->lock, NULL);
	pm->ebpf = OPT(opts, ebpf, NULL);
	pm->file_ids = OPT(opts, file_ids, NULL);
	pm->reporter = OPT(opts, reporter, NULL);
	pm->deltas = OPT(opts, deltas, NULL);
	pm->filter_error_frames = OPT(opts, filter_error_frames, false);
	pm->elf_cache_max = OPT(opts, elf_cache_size, 0) ?: DEFAULT_ELF_CACHE;
	snprintf(pm->proc_root, sizeof(pm->proc_root), "%s", root ? root : "/proc");
	pm->monitor_interval_ns = (uint64_t)(OPT(opts, monitor_interval_ms, 0) ?: 30000) * 1000000ull;
	pm->last_sweep = lupe_ktime_now();

	if (!pm->ebpf && !(pm->ebpf = lupe_ebpf_recorder_new()))
		goto err_out;
	if (!pm->file_ids && !(pm->file_ids = lupe_fileid_mapper_new_lru(0)))
		goto err_out;
	pm->live = lupe_hashmap__new();
	pm->exes = lupe_hashmap__new();
	pm->elf_cache = lupe_hashmap__new();
	pm->synth = lupe_hashmap__new();
	if (!pm->live || !pm->exes || !pm->elf_cache || !pm->synth)
		goto err_out;
	return pm;

err_out:
	lupe_procmgr__free(pm);
	errno = -err;
	return NULL;
}

static void free_synth(void *v)
{
	struct synth *s = v;

	free_interval_data(&s->data);
	free(s);
}

void lupe_procmgr__free(struct lupe_procmgr *pm)
{
	struct process *p;
	size_t pos = 0;
	struct lupe_key k;
	void *v;

	if (!pm)
		return;
	if (pm->live) {
		while (lupe_hashmap__next(pm->live, &pos, &k, &v)) {
			lupe_hashmap__delete(pm->live, k);
			process_free(pm, v);
		}
	}
	while ((p = pm->exited)) {
		pm->exited = p->next;
		process_free(pm, p);
	}
	lupe_hashmap__free(pm->live);
	lupe_hashmap__free(pm->exes); /* empty: every exe was released with its mappings */
	lupe_hashmap__free_values(pm->elf_cache, free);
	lupe_hashmap__free_values(pm->synth, free_synth);
	if (pm->ebpf)
		pm->ebpf->ops->free(pm->ebpf);
	lupe_fileid_mapper_free(pm->file_ids);
	if (pm->reporter)
		pm->reporter->ops->free(pm->reporter);
	if (pm->deltas)
		pm->deltas->ops->free(pm->deltas);
	pthread_mutex_destroy(&pm->lock);
	free(pm);
}

/* ---- the recording fake ---------------------------------------------------------- */

struct recorder {
	struct lupe_ebpf_handler h;
	struct lupe_ebpf_record *recs;
	size_t n, cap;
};

static int record(struct lupe_ebpf_handler *h, struct lupe_ebpf_record r)
{
	struct recorder *rec = (struct recorder *)h;

	if (rec->n == rec->cap) {
		size_t cap = rec->cap ? rec->cap * 2 : 64;
		void *p = realloc(rec->recs, cap * sizeof(*rec->recs));

		if (!p)
			return -ENOMEM;
		rec->recs = p;
		rec->cap = cap;
	}
	rec->recs[rec->n++] = r;
	return 0;
}

static int rec_new_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	return record(h, (struct lupe_ebpf_record){ .call = LUPE_EBPF_NEW_PID, .pid = pid });
}

static int rec_delete_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	return record(h, (struct lupe_ebpf_record){ .call = LUPE_EBPF_DELETE_PID, .pid = pid });
}

static struct lupe_ebpf_record mapping_record(enum lupe_ebpf_call call, pid_t pid,
					      const struct lupe_mapping *m)
{
	return (struct lupe_ebpf_record){
		.call = call, .pid = pid, .host_file_id = lupe_file_id_host(m->file_id),
		.vaddr = m->vaddr, .length = m->length, .bias = m->bias,
	};
}

static int rec_add_mapping(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	return record(h, mapping_record(LUPE_EBPF_ADD_MAPPING, pid, m));
}

static int rec_delete_mapping(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	return record(h, mapping_record(LUPE_EBPF_DELETE_MAPPING, pid, m));
}

static int rec_load_deltas(struct lupe_ebpf_handler *h, uint64_t host,
			   const struct lupe_interval_data *d)
{
	return record(h, (struct lupe_ebpf_record){
		.call = LUPE_EBPF_LOAD_DELTAS, .host_file_id = host, .ndeltas = d->count });
}

static int rec_unload_deltas(struct lupe_ebpf_handler *h, uint64_t host)
{
	return record(h, (struct lupe_ebpf_record){
		.call = LUPE_EBPF_UNLOAD_DELTAS, .host_file_id = host });
}

static void rec_free(struct lupe_ebpf_handler *h)
{
	struct recorder *rec = (struct recorder *)h;

	free(rec->recs);
	free(rec);
}

static const struct lupe_ebpf_handler_ops recorder_ops = {
	.new_pid = rec_new_pid,
	.delete_pid = rec_delete_pid,
	.add_mapping = rec_add_mapping,
	.delete_mapping = rec_delete_mapping,
	.load_deltas = rec_load_deltas,
	.unload_deltas = rec_unload_deltas,
	.free = rec_free,
};

struct lupe_ebpf_handler *lupe_ebpf_recorder_new(void)
{
	struct recorder *rec = calloc(1, sizeof(*rec));

	if (!rec)
		return NULL;
	rec->h.ops = &recorder_ops;
	return &rec->h;
}

bool lupe_ebpf_handler_is_recorder(const struct lupe_ebpf_handler *h)
{
	return h && h->ops == &recorder_ops;
}

const struct lupe_ebpf_record *lupe_ebpf_recorder_records(struct lupe_ebpf_handler *h, size_t *n)
{
	struct recorder *rec = (struct recorder *)h;

	*n = rec->n;
	return rec->recs;
}

void lupe_ebpf_recorder_clear(struct lupe_ebpf_handler *h)
{
	((struct recorder *)h)->n = 0;
}

/* ---- the null handler ------------------------------------------------------------ */

static int null_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	return 0;
}

static int null_mapping(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	return 0;
}

static int null_load(struct lupe_ebpf_handler *h, uint64_t host, const struct lupe_interval_data *d)
{
	return 0;
}

static int null_unload(struct lupe_ebpf_handler *h, uint64_t host)
{
	return 0;
}

static void null_free(struct lupe_ebpf_handler *h)
{
	free(h);
}

static const struct lupe_ebpf_handler_ops null_ops = {
	.new_pid = null_pid,
	.delete_pid = null_pid,
	.add_mapping = null_mapping,
	.delete_mapping = null_mapping,
	.load_deltas = null_load,
	.unload_deltas = null_unload,
	.free = null_free,
};

struct lupe_ebpf_handler *lupe_ebpf_null_new(void)
{
	struct lupe_ebpf_handler *h = calloc(1, sizeof(*h));

	if (h)
		h->ops = &null_ops;
	return h;
}

/* ---- APM correlation ------------------------------------------------------------------- */

void lupe_procmgr__set_apm(struct lupe_procmgr *pm, struct lupe_apm *apm)
{
	pm->apm = apm;
}

struct lupe_apm *lupe_procmgr__apm(struct lupe_procmgr *pm)
{
	return pm->apm;
}

/* The registry has its own lock: the manager's is not taken, so a notification never
 * waits for a synchronization reading a new file. */
const char *lupe_procmgr__notify_apm(struct lupe_procmgr *pm, const struct lupe_raw_trace *raw,
				     struct lupe_file_id trace_hash, uint32_t count)
{
	if (!pm || !pm->apm || !raw)
		return NULL;
	return lupe_apm__notify(pm->apm, raw->pid, raw->apm, trace_hash, count);
}
