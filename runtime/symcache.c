#define LUPE_LOG_PREFIX "symbols: "
#include "symcache.h"

#include "hashmap.h"
#include "log.h"
#include "symbolize.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct symfile {
	int fd;                   /* dup of the manager's descriptor, or a memfd (vDSO) */
	bool tried;               /* the table was loaded, or failed to */
	struct lupe_symtab *tab;
	char path[];
};

struct lupe_symcache {
	struct lupe_symbol_reporter reporter;
	struct lupe_hashmap *files;      /* {host, 0} -> symfile */
	/* Kernel symbols load in a thread started with the cache: /proc/kallsyms takes tens
	 * of milliseconds to read, which must not delay the first drains. */
	pthread_t ksyms_thread;
	bool ksyms_started, ksyms_joined;
	atomic_bool ksyms_done;
	int ksyms_err;
	struct lupe_ksyms *ksyms;
	char *kallsyms;
	struct lupe_symcache_stats st;
};

static void *load_ksyms(void *arg);
static void join_ksyms(struct lupe_symcache *sc);

static struct lupe_symcache *of_reporter(struct lupe_symbol_reporter *r)
{
	return (struct lupe_symcache *)((char *)r - offsetof(struct lupe_symcache, reporter));
}

/* The vDSO exists only in memory; a memfd gives the symbol loader a file to read. */
static int memfd_of(const void *image, size_t len)
{
	int fd = memfd_create("lupe-vdso", MFD_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (write(fd, image, len) != (ssize_t)len) {
		close(fd);
		return -EIO;
	}
	return fd;
}

static void on_loaded(struct lupe_symbol_reporter *r, const struct lupe_exe_info *info)
{
	struct lupe_symcache *sc = of_reporter(r);
	size_t plen = strlen(info->path) + 1;
	struct symfile *f = calloc(1, sizeof(*f) + plen);
	void *old = NULL;

	if (!f)
		return;
	memcpy(f->path, info->path, plen);
	f->fd = info->image ? memfd_of(info->image, info->image_len)
			    : fcntl(info->fd, F_DUPFD_CLOEXEC, 0);
	if (f->fd < 0)
		pr_debug("'%s': cannot keep the file open: %s", info->path, lupe_errstr(errno));
	if (lupe_hashmap__set(sc->files, (struct lupe_key){ info->host_file_id, 0 }, f, &old)) {
		if (f->fd >= 0)
			close(f->fd);
		free(f);
		return;
	}
	if (old) {
		struct symfile *o = old;

		lupe_symtab__free(o->tab);
		if (o->fd >= 0)
			close(o->fd);
		free(o);
	}
	sc->st.files++;
}

static void symfile_free(struct symfile *f)
{
	if (!f)
		return;
	lupe_symtab__free(f->tab);
	if (f->fd >= 0)
		close(f->fd);
	free(f);
}

static void on_unloaded(struct lupe_symbol_reporter *r, uint64_t host)
{
	struct lupe_symcache *sc = of_reporter(r);
	struct symfile *f = lupe_hashmap__delete(sc->files, (struct lupe_key){ host, 0 });

	if (f)
		sc->st.files--;
	symfile_free(f);
}

static void reporter_free(struct lupe_symbol_reporter *r)
{
}

static const struct lupe_symbol_reporter_ops reporter_ops = {
	.executable_loaded = on_loaded,
	.executable_unloaded = on_unloaded,
	.free = reporter_free,
};

struct lupe_symcache *lupe_symcache__new(const char *kallsyms)
{
	struct lupe_symcache *sc = calloc(1, sizeof(*sc));

	if (!sc)
		return NULL;
	sc->reporter.ops = &reporter_ops;
	sc->files = lupe_hashmap__new();
	sc->kallsyms = kallsyms ? strdup(kallsyms) : NULL;
	if (!sc->files || (kallsyms && !sc->kallsyms)) {
		lupe_symcache__free(sc);
		errno = ENOMEM;
		return NULL;
	}
	sc->ksyms_started = pthread_create(&sc->ksyms_thread, NULL, load_ksyms, sc) == 0;
	if (!sc->ksyms_started)
		load_ksyms(sc);
	return sc;
}

void lupe_symcache__free(struct lupe_symcache *sc)
{
	size_t pos = 0;
	struct lupe_key k;
	void *v;

	if (!sc)
		return;
	while (sc->files && lupe_hashmap__next(sc->files, &pos, &k, &v))
		symfile_free(v);
	lupe_hashmap__free(sc->files);
	join_ksyms(sc);
	lupe_ksyms__free(sc->ksyms);
	free(sc->kallsyms);
	free(sc);
}

struct lupe_symbol_reporter *lupe_symcache__reporter(struct lupe_symcache *sc)
{
	return &sc->reporter;
}

const char *lupe_symcache__native(struct lupe_symcache *sc, uint64_t host, uint64_t addr,
				  uint64_t *offset)
{
	struct symfile *f = lupe_hashmap__get(sc->files, (struct lupe_key){ host, 0 });
	const char *name;

	sc->st.lookups++;
	if (!f) {
		sc->st.misses++;
		return NULL;
	}
	if (!f->tried) {
		f->tried = true;
		uint64_t t0 = lupe_ktime_now();

		if (f->fd >= 0)
			f->tab = lupe_symtab__load(f->path[0] == '/' ? f->path : NULL, f->fd, NULL);
		pr_debug("'%s': symbols loaded in %llu us", f->path,
			 (unsigned long long)(lupe_ktime_now() - t0) / 1000);
		if (f->tab) {
			sc->st.tables_loaded++;
		} else {
			sc->st.load_errors++;
			pr_debug("'%s': no symbols: %s", f->path, lupe_errstr(errno));
		}
	}
	name = f->tab ? lupe_symtab__lookup(f->tab, addr, offset) : NULL;
	if (!name)
		sc->st.misses++;
	return name;
}

const char *lupe_symcache__path(struct lupe_symcache *sc, uint64_t host)
{
	struct symfile *f = lupe_hashmap__get(sc->files, (struct lupe_key){ host, 0 });

	return f ? f->path : NULL;
}

static void *load_ksyms(void *arg)
{
	struct lupe_symcache *sc = arg;
	uint64_t t0 = lupe_ktime_now();

	sc->ksyms = lupe_ksyms__load(sc->kallsyms);
	sc->ksyms_err = sc->ksyms ? 0 : errno;
	pr_debug("kernel symbols loaded in %llu us",
		 (unsigned long long)(lupe_ktime_now() - t0) / 1000);
	atomic_store(&sc->ksyms_done, true);
	return NULL;
}

static void join_ksyms(struct lupe_symcache *sc)
{
	if (!sc->ksyms_started || sc->ksyms_joined)
		return;
	pthread_join(sc->ksyms_thread, NULL);
	sc->ksyms_joined = true;
	if (!sc->ksyms)
		pr_warn("kernel symbols unavailable: %s", lupe_errstr(sc->ksyms_err));
}

bool lupe_symcache__kernel_ready(struct lupe_symcache *sc)
{
	if (sc->ksyms_started && !atomic_load(&sc->ksyms_done))
		return false;
	join_ksyms(sc);
	return true;
}

const char *lupe_symcache__kernel(struct lupe_symcache *sc, uint64_t addr, uint64_t *offset,
				  const char **module)
{
	const char *name;

	join_ksyms(sc);
	sc->st.kernel_lookups++;
	name = sc->ksyms ? lupe_ksyms__lookup(sc->ksyms, addr, offset, module) : NULL;
	if (!name)
		sc->st.kernel_misses++;
	return name;
}

void lupe_symcache__stats(struct lupe_symcache *sc, struct lupe_symcache_stats *out)
{
	*out = sc->st;
}
