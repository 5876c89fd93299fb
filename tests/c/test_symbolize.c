/* runtime/symbolize: ELF symbol tables and kallsyms, checked against nm, nm -C, c++filt,
 * addr2line, readelf and hand-computed kallsyms answers. The fixture programs are compiled
 * at test time with cc/c++ (and rustc when present). */
#include "symbolize.h"
#include "lupe_test.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------ */

static char work[PATH_MAX]; /* a temp dir shared by all tests, removed at exit */

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
		snprintf(work, sizeof(work), "/tmp/lupe-test-symbolize.XXXXXX");
		if (!mkdtemp(work)) {
			work[0] = '\0';
			return NULL;
		}
		atexit(cleanup);
	}
	return work;
}

static char *path_in(char *buf, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(buf, PATH_MAX, "%s/", work);

	va_start(ap, fmt);
	vsnprintf(buf + n, PATH_MAX - n, fmt, ap);
	va_end(ap);
	return buf;
}

/* A command's whole stdout, malloc'd (NULL on failure). */
static char *capture(const char *fmt, ...)
{
	char cmd[4 * PATH_MAX];
	size_t len = 0, cap = 1 << 16;
	char *out = malloc(cap);
	va_list ap;
	FILE *p;
	size_t n;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (!out || !(p = popen(cmd, "r"))) {
		free(out);
		return NULL;
	}
	while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
		len += n;
		if (cap - len < 2) {
			char *nout = realloc(out, cap * 2);

			if (!nout)
				break;
			out = nout;
			cap *= 2;
		}
	}
	out[len] = '\0';
	if (pclose(p) != 0) {
		free(out);
		return NULL;
	}
	return out;
}

static bool have(const char *tool)
{
	return lupe_test_run("command -v %s >/dev/null 2>&1", tool) == 0;
}

/* ---- the fixture binaries, built once ------------------------------------------------ */

struct fixture_bins {
	int state; /* 0 not tried, 1 built, -1 failed */
	char c[PATH_MAX], c_rdyn[PATH_MAX], cxx[PATH_MAX], c_debug[PATH_MAX];
	char cxx_debug[PATH_MAX];
};
static struct fixture_bins bins;

static const struct fixture_bins *build_fixtures(void)
{
	const char *fx = fixtures();

	if (bins.state)
		return bins.state > 0 ? &bins : NULL;
	bins.state = -1;
	if (!workdir())
		return NULL;
	path_in(bins.c, "prog");
	path_in(bins.c_rdyn, "prog_rdyn");
	path_in(bins.cxx, "progxx");
	path_in(bins.c_debug, "prog.debug");
	path_in(bins.cxx_debug, "progxx.debug");
	if (lupe_test_run("cc -g -O2 -Wl,--build-id -o %s %s/symbolize/prog.c", bins.c, fx) ||
	    lupe_test_run("cc -g -O2 -rdynamic -o %s %s/symbolize/prog.c", bins.c_rdyn, fx) ||
	    lupe_test_run("c++ -g -O2 -Wl,--build-id -o %s %s/symbolize/prog.cpp", bins.cxx, fx) ||
	    lupe_test_run("objcopy --only-keep-debug %s %s", bins.c, bins.c_debug) ||
	    lupe_test_run("objcopy --only-keep-debug %s %s", bins.cxx, bins.cxx_debug))
		return NULL;
	bins.state = 1;
	return &bins;
}

#define NEED_FIXTURES(b)                                                    \
	do {                                                                \
		if (!have("cc") || !have("c++") || !have("nm") || !have("objcopy")) \
			SKIP("cc, c++, nm or objcopy missing");             \
		if (!((b) = build_fixtures()))                              \
			FAIL("could not build the fixture programs");       \
	} while (0)

/* ---- the nm oracle -------------------------------------------------------------------- */

struct nmsym {
	uint64_t addr, size;
	char type;
	char *name;
};

struct nmlist {
	struct nmsym *s;
	size_t n;
	char *text;
};

static int nmsym_cmp(const void *pa, const void *pb)
{
	const struct nmsym *a = pa, *b = pb;

	return a->addr < b->addr ? -1 : a->addr > b->addr;
}

/* `nm -S --defined-only <flags> file`, every line, sorted by address. */
static int nm_load(struct nmlist *l, const char *flags, const char *file)
{
	char *line, *save = NULL;
	size_t cap = 0;

	memset(l, 0, sizeof(*l));
	l->text = capture("nm -S --defined-only %s '%s' 2>/dev/null", flags, file);
	if (!l->text)
		return -1;
	for (line = strtok_r(l->text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *f1 = line, *f2, *f3, *end;
		struct nmsym s = { 0 };

		f2 = strchr(f1, ' ');
		if (!f2)
			continue;
		*f2++ = '\0';
		s.addr = strtoull(f1, &end, 16);
		f3 = strchr(f2, ' ');
		if (!f3)
			continue;
		if (f3 - f2 == 1) { /* no size column */
			s.type = *f2;
			s.name = f3 + 1;
		} else {
			*f3++ = '\0';
			s.size = strtoull(f2, &end, 16);
			s.type = *f3;
			if (f3[1] != ' ')
				continue;
			s.name = f3 + 2;
		}
		if (l->n == cap) {
			struct nmsym *ns;

			cap = cap ? 2 * cap : 1024;
			ns = realloc(l->s, cap * sizeof(*ns));
			if (!ns)
				return -1;
			l->s = ns;
		}
		l->s[l->n++] = s;
	}
	if (l->n)
		qsort(l->s, l->n, sizeof(*l->s), nmsym_cmp);
	return 0;
}

static void nm_free(struct nmlist *l)
{
	free(l->s);
	free(l->text);
}

static bool is_func_type(char t)
{
	return strchr("TtWwi", t) != NULL;
}

/* Is name one of the sized function symbols nm lists at addr? */
static bool nm_has(const struct nmlist *l, uint64_t addr, const char *name)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->s[i].addr == addr && is_func_type(l->s[i].type) && l->s[i].size &&
		    strcmp(l->s[i].name, name) == 0)
			return true;
	return false;
}

static bool nm_starts_at(const struct nmlist *l, uint64_t addr)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->s[i].addr == addr)
			return true;
	return false;
}

/* For every sized function nm lists: lookup(addr + k) gives one of the names at addr and
 * offset k, for k at the start, middle and last byte; the byte just past the end (when
 * no symbol starts there) is a miss. Returns the number of functions checked, or -1. */
static long check_nm(struct lupe_symtab *st, const struct nmlist *l)
{
	long checked = 0;

	for (size_t i = 0; i < l->n; i++) {
		const struct nmsym *e = &l->s[i];
		uint64_t limit = e->size, ks[3];
		uint64_t off = 0;
		const char *name;
		bool nested = false;

		if (!is_func_type(e->type) || !e->size)
			continue;
		for (size_t j = i + 1; j < l->n && l->s[j].addr < e->addr + e->size; j++) {
			if (l->s[j].addr > e->addr && l->s[j].size && is_func_type(l->s[j].type)) {
				limit = l->s[j].addr - e->addr;
				nested = true;
				break;
			}
		}
		ks[0] = 0;
		ks[1] = limit / 2;
		ks[2] = limit - 1;
		for (int k = 0; k < 3; k++) {
			name = lupe_symtab__lookup(st, e->addr + ks[k], &off);
			if (!name || !nm_has(l, e->addr, name) || off != ks[k]) {
				printf("    %s @%#llx+%#llx: got %s+%#llx\n", e->name,
				       (unsigned long long)e->addr, (unsigned long long)ks[k],
				       name ? name : "(null)", (unsigned long long)off);
				return -1;
			}
		}
		if (!nested && !nm_starts_at(l, e->addr + e->size) &&
		    (name = lupe_symtab__lookup(st, e->addr + e->size, &off))) {
			/* Only another symbol that began earlier and still covers it may answer. */
			printf("    past the end of %s: got %s+%#llx\n", e->name, name,
			       (unsigned long long)off);
			return -1;
		}
		checked++;
	}
	return checked;
}

static long check_file_nm(struct lupe_symtab *st, const char *flags, const char *file)
{
	struct nmlist l;
	long r;

	if (nm_load(&l, flags, file))
		return -1;
	r = check_nm(st, &l);
	nm_free(&l);
	return r;
}

static struct lupe_symtab *load_with_root(const char *path, const char *root,
					  enum lupe_demangle_mode mode)
{
	LUPE_OPTS(lupe_symtab_opts, opts, .debug_root = root, .demangle = mode);

	return lupe_symtab__load(path, -1, &opts);
}

/* ---- ELF symbol tables ---------------------------------------------------------------- */

TEST(symtab_c_matches_nm)
{
	const struct fixture_bins *b;
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;
	char root[PATH_MAX];
	long n;

	NEED_FIXTURES(b);
	mkdir(path_in(root, "empty_root"), 0755);
	st = load_with_root(b->c, root, LUPE_DEMANGLE_LAZY);
	ASSERT(st);
	ASSERT_EQ(lupe_symtab__source(st), LUPE_SYMSRC_SYMTAB);
	ASSERT(lupe_symtab__debug_path(st) == NULL);
	n = check_file_nm(st, "", b->c);
	lupe_symtab__stats(st, &stats);
	lupe_symtab__free(st);
	ASSERT(n >= 12); /* the fixture's own functions, at least */
	ASSERT(stats.lookups >= (uint64_t)n * 3);
	ASSERT(stats.aliases >= 2); /* fx_alias, and fx_ifunc on its resolver */
	ASSERT_EQ(stats.bad_symbols, 0);
}

TEST(symtab_counts_misses)
{
	const struct fixture_bins *b;
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;
	uint64_t off = 77;

	NEED_FIXTURES(b);
	st = lupe_symtab__load(b->c, -1, NULL);
	ASSERT(st);
	ASSERT(lupe_symtab__lookup(st, 0, &off) == NULL);
	ASSERT(lupe_symtab__lookup(st, UINT64_MAX, &off) == NULL);
	ASSERT_EQ(off, 77);
	lupe_symtab__stats(st, &stats);
	lupe_symtab__free(st);
	ASSERT_EQ(stats.lookups, 2);
	ASSERT_EQ(stats.misses, 2);
	ASSERT(stats.symbols > 0);
	ASSERT(stats.mem_bytes > 0);
}

/* addr2line reads DWARF, a different source than the symbol table. With -i it lists the
 * inline chain of each address innermost first (-a heads each group with the address):
 * the last function of a group is the one the code belongs to. Checked at the start and
 * the middle of each function whose name contains prefix. */
static int check_addr2line(struct lupe_symtab *st, const char *file, const char *flags,
			   const char *prefix)
{
	struct nmlist l;
	char cmd[65536];
	size_t len;
	int nq = 0, err = -1;
	uint64_t addrs[256];
	char *out = NULL, *lines[8192];
	int nlines = 0, at = 0;

	if (nm_load(&l, flags, file))
		return -1;
	len = (size_t)snprintf(cmd, sizeof(cmd), "addr2line -a -i -f %s -e '%s'", flags, file);
	for (size_t i = 0; i < l.n && nq < 254; i++) {
		const struct nmsym *e = &l.s[i];
		bool alias = (i > 0 && l.s[i - 1].addr == e->addr) ||
			     (i + 1 < l.n && l.s[i + 1].addr == e->addr);

		/* Aliases: DWARF names one, the table may show another; skip them. */
		if (!is_func_type(e->type) || !e->size || alias || !strstr(e->name, prefix))
			continue;
		addrs[nq++] = e->addr;
		addrs[nq++] = e->addr + e->size / 2;
		len += (size_t)snprintf(cmd + len, sizeof(cmd) - len, " %#llx %#llx",
					(unsigned long long)e->addr,
					(unsigned long long)(e->addr + e->size / 2));
	}
	if (nq < 6 || len >= sizeof(cmd))
		goto out;
	out = capture("%s", cmd);
	if (!out)
		goto out;
	for (char *save = NULL, *line = strtok_r(out, "\n", &save); line && nlines < 8192;
	     line = strtok_r(NULL, "\n", &save))
		lines[nlines++] = line;
	for (int i = 0; i < nq; i++) {
		uint64_t off = 1;
		const char *name = lupe_symtab__lookup(st, addrs[i], &off), *want;
		int next = at + 1;

		if (at >= nlines || strncmp(lines[at], "0x", 2) != 0)
			goto out;
		while (next < nlines && strncmp(lines[next], "0x", 2) != 0)
			next++;
		want = next - at >= 3 ? lines[next - 2] : NULL;
		if (!want || !name || off != addrs[i] - addrs[i & ~1] || strcmp(want, name) != 0) {
			printf("    addr2line %#llx: '%s', table: '%s'+%llu\n",
			       (unsigned long long)addrs[i], want ? want : "(none)",
			       name ? name : "(null)", (unsigned long long)off);
			goto out;
		}
		at = next;
	}
	err = 0;
out:
	free(out);
	nm_free(&l);
	return err;
}

TEST(symtab_c_matches_addr2line)
{
	const struct fixture_bins *b;
	struct lupe_symtab *st;
	int err;

	NEED_FIXTURES(b);
	if (!have("addr2line"))
		SKIP("addr2line missing");
	st = lupe_symtab__load(b->c, -1, NULL);
	ASSERT(st);
	err = check_addr2line(st, b->c, "", "fx_");
	lupe_symtab__free(st);
	ASSERT_OK(err);
}

TEST(symtab_cxx_demangled_matches_nm_C_and_addr2line)
{
	const struct fixture_bins *b;
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;
	long n;
	int err;

	NEED_FIXTURES(b);
	st = lupe_symtab__load(b->cxx, -1, NULL);
	ASSERT(st);
	n = check_file_nm(st, "-C", b->cxx);
	err = have("addr2line") ? check_addr2line(st, b->cxx, "-C", "fx::") : 0;
	lupe_symtab__stats(st, &stats);
	lupe_symtab__free(st);
	ASSERT(n >= 10);
	ASSERT_OK(err);
	ASSERT(stats.demangled >= 10);
}

TEST(symtab_raw_names_match_nm)
{
	const struct fixture_bins *b;
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;
	long n;

	NEED_FIXTURES(b);
	st = load_with_root(b->cxx, NULL, LUPE_DEMANGLE_NONE);
	ASSERT(st);
	n = check_file_nm(st, "", b->cxx);
	lupe_symtab__stats(st, &stats);
	lupe_symtab__free(st);
	ASSERT(n >= 10);
	ASSERT_EQ(stats.demangled, 0);
}

TEST(symtab_eager_equals_lazy)
{
	const struct fixture_bins *b;
	struct lupe_symtab *lazy, *eager;
	struct lupe_symtab_stats ls, es;
	struct nmlist l;
	int diff = 0;

	NEED_FIXTURES(b);
	lazy = load_with_root(b->cxx, NULL, LUPE_DEMANGLE_LAZY);
	eager = load_with_root(b->cxx, NULL, LUPE_DEMANGLE_EAGER);
	ASSERT(lazy && eager);
	lupe_symtab__stats(eager, &es);
	ASSERT_OK(nm_load(&l, "", b->cxx));
	for (size_t i = 0; i < l.n; i++) {
		const char *a = lupe_symtab__lookup(lazy, l.s[i].addr, NULL);
		const char *e = lupe_symtab__lookup(eager, l.s[i].addr, NULL);

		if ((a == NULL) != (e == NULL) || (a && strcmp(a, e) != 0))
			diff++;
	}
	lupe_symtab__stats(lazy, &ls);
	nm_free(&l);
	lupe_symtab__free(lazy);
	lupe_symtab__free(eager);
	ASSERT_EQ(diff, 0);
	ASSERT(es.demangled > 0);
	ASSERT(ls.demangled <= es.demangled);
}

/* lupe_demangle against c++filt, over every mangled name of the C++ fixture. */
TEST(demangle_matches_cxxfilt)
{
	const struct fixture_bins *b;
	char names[PATH_MAX];
	char *raw = NULL, *filt = NULL, *r, *f, *rs = NULL, *fs = NULL;
	int n = 0, bad = 0;
	FILE *fp;

	NEED_FIXTURES(b);
	if (!have("c++filt"))
		SKIP("c++filt missing");
	raw = capture("nm --defined-only '%s' | awk '$3 ~ /^_Z/ {print $3}' | sort -u", b->cxx);
	ASSERT(raw);
	fp = fopen(path_in(names, "mangled.txt"), "w");
	ASSERT(fp);
	fputs(raw, fp);
	fclose(fp);
	filt = capture("c++filt < '%s'", names);
	ASSERT(filt);
	for (r = strtok_r(raw, "\n", &rs), f = strtok_r(filt, "\n", &fs); r && f;
	     r = strtok_r(NULL, "\n", &rs), f = strtok_r(NULL, "\n", &fs), n++) {
		char *d = lupe_demangle(r);

		if (!d || strcmp(d, f) != 0) {
			printf("    %s: '%s' vs c++filt '%s'\n", r, d ? d : "(null)", f);
			bad++;
		}
		free(d);
	}
	free(raw);
	free(filt);
	ASSERT(n >= 10);
	ASSERT_EQ(bad, 0);
	ASSERT(lupe_demangle("main") == NULL);
	ASSERT(lupe_demangle("_Z") == NULL);
	ASSERT(lupe_demangle("") == NULL);
	ASSERT(lupe_demangle(NULL) == NULL);
}

TEST(symtab_rust_legacy_and_v0)
{
	char src[PATH_MAX], leg[PATH_MAX], v0[PATH_MAX];
	const char *modes[2] = { "", "-C symbol-mangling-version=v0" };
	const char *outs[2];

	if (!have("rustc") || !have("nm"))
		SKIP("rustc not on PATH");
	if (!workdir())
		FAIL("no temp dir");
	snprintf(src, sizeof(src), "%s/symbolize/prog.rs", fixtures());
	outs[0] = path_in(leg, "prog_rs_legacy");
	outs[1] = path_in(v0, "prog_rs_v0");
	for (int i = 0; i < 2; i++) {
		struct lupe_symtab *st;
		uint64_t off = 1;
		struct nmlist l;
		long n;
		bool found = false;

		ASSERT_OK(lupe_test_run("rustc -O -g %s -o '%s' '%s' 2>/dev/null", modes[i], outs[i], src));
		st = lupe_symtab__load(outs[i], -1, NULL);
		ASSERT(st);
		n = check_file_nm(st, "-C", outs[i]);
		ASSERT(n > 100); /* std is linked in */
		/* The fixture's own function, with the hash gone in both manglings. */
		ASSERT_OK(nm_load(&l, "-C", outs[i]));
		for (size_t j = 0; j < l.n; j++) {
			if (strcmp(l.s[j].name, "prog::fx_rust_leaf") == 0) {
				const char *name = lupe_symtab__lookup(st, l.s[j].addr, &off);

				found = name && strcmp(name, "prog::fx_rust_leaf") == 0 && off == 0;
			}
		}
		nm_free(&l);
		lupe_symtab__free(st);
		ASSERT(found);
	}
}

struct thread_arg {
	struct lupe_symtab *st;
	const struct nmlist *l;
	struct lupe_symtab *oracle;
	int errors;
};

static void *lookup_thread(void *p)
{
	struct thread_arg *a = p;

	for (int rep = 0; rep < 50; rep++) {
		for (size_t i = 0; i < a->l->n; i++) {
			uint64_t addr = a->l->s[(i * 7 + rep) % a->l->n].addr, o1 = 0, o2 = 0;
			const char *x = lupe_symtab__lookup(a->st, addr, &o1);
			const char *y = lupe_symtab__lookup(a->oracle, addr, &o2);

			if ((x == NULL) != (y == NULL) || (x && (strcmp(x, y) || o1 != o2)))
				a->errors++;
		}
	}
	return NULL;
}

TEST(symtab_lazy_lookups_from_threads)
{
	const struct fixture_bins *b;
	struct lupe_symtab *lazy, *eager;
	struct lupe_symtab_stats stats;
	struct thread_arg args[4];
	pthread_t th[4];
	struct nmlist l;
	int errors = 0;

	NEED_FIXTURES(b);
	lazy = load_with_root(b->cxx, NULL, LUPE_DEMANGLE_LAZY);
	eager = load_with_root(b->cxx, NULL, LUPE_DEMANGLE_EAGER);
	ASSERT(lazy && eager);
	ASSERT_OK(nm_load(&l, "", b->cxx));
	for (int i = 0; i < 4; i++) {
		args[i] = (struct thread_arg){ lazy, &l, eager, 0 };
		ASSERT_OK(pthread_create(&th[i], NULL, lookup_thread, &args[i]));
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		errors += args[i].errors;
	}
	lupe_symtab__stats(lazy, &stats);
	nm_free(&l);
	lupe_symtab__free(lazy);
	lupe_symtab__free(eager);
	ASSERT_EQ(errors, 0);
	ASSERT_EQ(stats.lookups, 4 * 50 * (uint64_t)l.n);
}

TEST(symtab_from_fd_keeps_offset)
{
	const struct fixture_bins *b;
	struct lupe_symtab *st;
	long n;
	int fd;

	NEED_FIXTURES(b);
	fd = open(b->c, O_RDONLY);
	ASSERT(fd >= 0);
	ASSERT_EQ(lseek(fd, 5, SEEK_SET), 5);
	st = lupe_symtab__load(NULL, fd, NULL);
	ASSERT_EQ(lseek(fd, 0, SEEK_CUR), 5);
	close(fd);
	ASSERT(st);
	n = check_file_nm(st, "", b->c);
	lupe_symtab__free(st);
	ASSERT(n >= 12);
}

/* ---- stripped files and separate debug files ------------------------------------------ */

TEST(symtab_stripped_uses_dynsym)
{
	const struct fixture_bins *b;
	char s[PATH_MAX], root[PATH_MAX];
	struct lupe_symtab *st;
	long n;

	NEED_FIXTURES(b);
	mkdir(path_in(root, "empty_root"), 0755);
	ASSERT_OK(lupe_test_run("strip -o '%s' '%s'", path_in(s, "prog_rdyn_s"), b->c_rdyn));
	st = load_with_root(s, root, LUPE_DEMANGLE_LAZY);
	ASSERT(st);
	ASSERT_EQ(lupe_symtab__source(st), LUPE_SYMSRC_DYNSYM);
	n = check_file_nm(st, "-D", s);
	lupe_symtab__free(st);
	ASSERT(n >= 5); /* fx_leaf, fx_recursive, fx_weak, fx_aliased_impl, main, ... */
}

TEST(symtab_stripped_without_symbols_is_empty)
{
	const struct fixture_bins *b;
	char s[PATH_MAX], root[PATH_MAX];
	struct lupe_symtab *st;
	struct nmlist l;
	size_t dyn_funcs = 0;

	NEED_FIXTURES(b);
	mkdir(path_in(root, "empty_root"), 0755);
	ASSERT_OK(lupe_test_run("strip -o '%s' '%s'", path_in(s, "prog_s"), b->c));
	ASSERT_OK(nm_load(&l, "-D", s));
	for (size_t i = 0; i < l.n; i++)
		dyn_funcs += is_func_type(l.s[i].type);
	nm_free(&l);
	st = load_with_root(s, root, LUPE_DEMANGLE_LAZY);
	ASSERT(st);
	ASSERT_EQ(lupe_symtab__count(st), dyn_funcs);
	if (dyn_funcs == 0)
		ASSERT_EQ(lupe_symtab__source(st), LUPE_SYMSRC_NONE);
	lupe_symtab__free(st);
}

/* Places prog's debug file per `where` and checks lookups against nm of the original. */
static int debuglink_case(const struct fixture_bins *b, const char *tag, int where,
			  enum lupe_symtab_source *src, char *debug_path, uint64_t *rejected)
{
	char dir[PATH_MAX], exe[PATH_MAX], dbg[PATH_MAX], root[PATH_MAX];
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;
	long n;

	path_in(dir, "dl_%s/bin", tag);
	path_in(root, "dl_%s/root", tag);
	snprintf(exe, sizeof(exe), "%s/prog", dir);
	if (where == 0 || where == 3)
		snprintf(dbg, sizeof(dbg), "%s/prog.debug", dir);
	else if (where == 1)
		snprintf(dbg, sizeof(dbg), "%s/.debug/prog.debug", dir);
	else
		snprintf(dbg, sizeof(dbg), "%s%s/prog.debug", root, dir);
	if (lupe_test_run("mkdir -p '%s' '%s' && mkdir -p \"$(dirname '%s')\"", dir, root, dbg) ||
	    lupe_test_run("objcopy --strip-all --add-gnu-debuglink='%s' '%s' '%s'", b->c_debug,
			  b->c, exe) ||
	    lupe_test_run("cp '%s' '%s'", b->c_debug, dbg))
		return -1;
	if (where == 3 && lupe_test_run("printf x >> '%s'", dbg)) /* the CRC no longer matches */
		return -1;
	st = load_with_root(exe, root, LUPE_DEMANGLE_LAZY);
	if (!st)
		return -1;
	*src = lupe_symtab__source(st);
	snprintf(debug_path, PATH_MAX, "%s",
		 lupe_symtab__debug_path(st) ? lupe_symtab__debug_path(st) : "");
	n = *src == LUPE_SYMSRC_DEBUGLINK ? check_file_nm(st, "", b->c) : 0;
	lupe_symtab__stats(st, &stats);
	*rejected = stats.debug_rejected;
	lupe_symtab__free(st);
	if (n < 0 || (*src == LUPE_SYMSRC_DEBUGLINK && n < 12))
		return -1;
	if (*src == LUPE_SYMSRC_DEBUGLINK && strcmp(debug_path, dbg) != 0) {
		printf("    debug file '%s', expected '%s'\n", debug_path, dbg);
		return -1;
	}
	return 0;
}

TEST(symtab_debuglink_beside_in_dot_debug_and_under_root)
{
	const struct fixture_bins *b;
	enum lupe_symtab_source src;
	char got[PATH_MAX];
	uint64_t rejected;
	const char *tags[3] = { "beside", "dotdebug", "root" };

	NEED_FIXTURES(b);
	for (int where = 0; where < 3; where++) {
		ASSERT_OK(debuglink_case(b, tags[where], where, &src, got, &rejected));
		ASSERT_EQ(src, LUPE_SYMSRC_DEBUGLINK);
		ASSERT_EQ(rejected, 0);
	}
}

TEST(symtab_debuglink_wrong_crc_is_rejected)
{
	const struct fixture_bins *b;
	enum lupe_symtab_source src;
	char got[PATH_MAX];
	uint64_t rejected;

	NEED_FIXTURES(b);
	ASSERT_OK(debuglink_case(b, "badcrc", 3, &src, got, &rejected));
	ASSERT(src == LUPE_SYMSRC_NONE || src == LUPE_SYMSRC_DYNSYM);
	ASSERT_EQ(rejected, 1);
	ASSERT_STREQ(got, "");
}

/* The build ID as readelf prints it. */
static int readelf_build_id(const char *file, char *hex, size_t len)
{
	char *out = capture("readelf -n '%s'", file), *p;
	size_t n;

	if (!out)
		return -1;
	p = strstr(out, "Build ID: ");
	if (!p) {
		free(out);
		return -1;
	}
	p += strlen("Build ID: ");
	n = strspn(p, "0123456789abcdef");
	if (n < 4 || n >= len) {
		free(out);
		return -1;
	}
	memcpy(hex, p, n);
	hex[n] = '\0';
	free(out);
	return 0;
}

TEST(symtab_build_id_debug_file)
{
	const struct fixture_bins *b;
	char hex[256], root[PATH_MAX], exe[PATH_MAX], want[PATH_MAX];
	struct lupe_symtab *st;
	long n;

	NEED_FIXTURES(b);
	if (!have("readelf"))
		SKIP("readelf missing");
	ASSERT_OK(readelf_build_id(b->c, hex, sizeof(hex)));
	path_in(root, "bid/root");
	snprintf(want, sizeof(want), "%s/.build-id/%.2s/%s.debug", root, hex, hex + 2);
	ASSERT_OK(lupe_test_run("mkdir -p \"$(dirname '%s')\" && cp '%s' '%s'", want, b->c_debug, want));
	ASSERT_OK(lupe_test_run("objcopy --strip-all '%s' '%s'", b->c, path_in(exe, "bid/prog")));
	st = load_with_root(exe, root, LUPE_DEMANGLE_LAZY);
	ASSERT(st);
	ASSERT_EQ(lupe_symtab__source(st), LUPE_SYMSRC_BUILD_ID);
	ASSERT_STREQ(lupe_symtab__debug_path(st), want);
	n = check_file_nm(st, "", b->c);
	lupe_symtab__free(st);
	ASSERT(n >= 12);
}

TEST(symtab_build_id_mismatch_is_rejected)
{
	const struct fixture_bins *b;
	char hex[256], root[PATH_MAX], exe[PATH_MAX], want[PATH_MAX];
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;

	NEED_FIXTURES(b);
	if (!have("readelf"))
		SKIP("readelf missing");
	ASSERT_OK(readelf_build_id(b->c, hex, sizeof(hex)));
	path_in(root, "bidbad/root");
	snprintf(want, sizeof(want), "%s/.build-id/%.2s/%s.debug", root, hex, hex + 2);
	/* Another program's debug file under this program's build ID. */
	ASSERT_OK(lupe_test_run("mkdir -p \"$(dirname '%s')\" && cp '%s' '%s'", want, b->cxx_debug, want));
	ASSERT_OK(lupe_test_run("objcopy --strip-all '%s' '%s'", b->c, path_in(exe, "bidbad/prog")));
	st = load_with_root(exe, root, LUPE_DEMANGLE_LAZY);
	ASSERT(st);
	lupe_symtab__stats(st, &stats);
	ASSERT(lupe_symtab__source(st) != LUPE_SYMSRC_BUILD_ID);
	ASSERT(lupe_symtab__debug_path(st) == NULL);
	lupe_symtab__free(st);
	ASSERT_EQ(stats.debug_rejected, 1);
}

/* The system's libc and its debug file, when the dbgsym package is installed. */
TEST(symtab_system_libc_debug_file)
{
	const char *libc = "/lib/x86_64-linux-gnu/libc.so.6";
	char hex[256], want[PATH_MAX];
	struct lupe_symtab *st;
	long n;

	if (!have("readelf") || !have("nm") || access(libc, R_OK) ||
	    readelf_build_id(libc, hex, sizeof(hex)))
		SKIP("no %s with a build ID", libc);
	snprintf(want, sizeof(want), "/usr/lib/debug/.build-id/%.2s/%s.debug", hex, hex + 2);
	if (access(want, R_OK))
		SKIP("no debug file for libc installed");
	st = lupe_symtab__load(libc, -1, NULL);
	ASSERT(st);
	ASSERT_EQ(lupe_symtab__source(st), LUPE_SYMSRC_BUILD_ID);
	ASSERT_STREQ(lupe_symtab__debug_path(st), want);
	n = check_file_nm(st, "", want);
	lupe_symtab__free(st);
	ASSERT(n > 1000);
}

/* ---- bad input ------------------------------------------------------------------------ */

static int write_file(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "w");
	size_t n;

	if (!f)
		return -1;
	n = fwrite(buf, 1, len, f);
	return fclose(f) == 0 && n == len ? 0 : -1;
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL;
	long sz;

	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (sz = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
	    (buf = malloc((size_t)sz)) && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
		free(buf);
		buf = NULL;
	}
	*len = buf ? (size_t)sz : 0;
	fclose(f);
	return buf;
}

static bool load_fails_with(const char *path, int e1, int e2)
{
	struct lupe_symtab *st;

	errno = 0;
	st = lupe_symtab__load(path, -1, NULL);
	if (st) {
		lupe_symtab__free(st);
		printf("    '%s' loaded\n", path);
		return false;
	}
	if (errno != e1 && errno != e2) {
		printf("    '%s': errno %d (%s)\n", path, errno, strerror(errno));
		return false;
	}
	return true;
}

TEST(symtab_rejects_non_elf)
{
	char p[PATH_MAX], obj[PATH_MAX], src[PATH_MAX];

	if (!workdir())
		FAIL("no temp dir");
	ASSERT_OK(write_file(path_in(p, "text.txt"), "hello, world\n", 13));
	ASSERT(load_fails_with(p, ENOEXEC, ENOEXEC));
	ASSERT_OK(write_file(path_in(p, "empty"), "", 0));
	ASSERT(load_fails_with(p, ENOEXEC, EINVAL));
	ASSERT(load_fails_with(path_in(p, "no-such-file"), ENOENT, ENOENT));
	ASSERT(load_fails_with(work, EISDIR, EISDIR));
	/* A FIFO must not block the loader. */
	ASSERT_OK(mkfifo(path_in(p, "fifo"), 0600));
	ASSERT(load_fails_with(p, EINVAL, EINVAL));
	ASSERT(lupe_symtab__load(NULL, -1, NULL) == NULL);
	ASSERT_EQ(errno, EINVAL);
	if (have("cc")) { /* a relocatable object has no virtual addresses */
		snprintf(src, sizeof(src), "%s/symbolize/prog.c", fixtures());
		ASSERT_OK(lupe_test_run("cc -c -o '%s' '%s'", path_in(obj, "prog.o"), src));
		ASSERT(load_fails_with(obj, ENOEXEC, ENOEXEC));
	}
}

TEST(symtab_rejects_truncated_elf)
{
	const struct fixture_bins *b;
	char p[PATH_MAX];
	Elf64_Ehdr eh;
	size_t len, shend;
	char *buf;

	NEED_FIXTURES(b);
	buf = read_file(b->c, &len);
	ASSERT(buf && len > sizeof(eh));
	memcpy(&eh, buf, sizeof(eh));
	shend = eh.e_shoff + (size_t)eh.e_shnum * eh.e_shentsize;
	ASSERT_EQ(shend, len); /* GNU ld puts the section headers last */
	size_t cuts[] = { 1, 4, 16, 52, 63, 64, 200, 1000, 4096, len / 2, eh.e_shoff,
			  eh.e_shoff + 1, len - eh.e_shentsize, len - 1 };
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		ASSERT_OK(write_file(path_in(p, "trunc"), buf, cuts[i]));
		if (!load_fails_with(p, ENOEXEC, EINVAL)) {
			free(buf);
			FAIL("cut at %zu of %zu", cuts[i], len);
		}
	}
	free(buf);
}

/* The section header of the first section of a type, in a 64-bit little-endian image. */
static Elf64_Shdr *find_shdr(char *buf, uint32_t type)
{
	Elf64_Ehdr *eh = (Elf64_Ehdr *)buf;

	for (int i = 0; i < eh->e_shnum; i++) {
		Elf64_Shdr *sh = (Elf64_Shdr *)(buf + eh->e_shoff + (size_t)i * eh->e_shentsize);

		if (sh->sh_type == type)
			return sh;
	}
	return NULL;
}

TEST(symtab_drops_out_of_range_names)
{
	const struct fixture_bins *b;
	char p[PATH_MAX], patched_names[32][64];
	uint64_t patched_addr[32];
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;
	Elf64_Shdr *symsh, *strsh;
	size_t len, npatched = 0, kept_checked = 0;
	char *buf;

	NEED_FIXTURES(b);
	buf = read_file(b->c, &len);
	ASSERT(buf);
	ASSERT((symsh = find_shdr(buf, SHT_SYMTAB)));
	strsh = (Elf64_Shdr *)(buf + ((Elf64_Ehdr *)buf)->e_shoff +
			       (size_t)symsh->sh_link * ((Elf64_Ehdr *)buf)->e_shentsize);
	/* Every other fx_ function gets a name offset far past the string table. */
	for (size_t i = 0, fx = 0; i < symsh->sh_size / sizeof(Elf64_Sym); i++) {
		Elf64_Sym *s = (Elf64_Sym *)(buf + symsh->sh_offset) + i;
		const char *name = buf + strsh->sh_offset + s->st_name;

		if (ELF64_ST_TYPE(s->st_info) != STT_FUNC || strncmp(name, "fx_", 3) != 0)
			continue;
		if (fx++ % 2 == 0 && npatched < 32) {
			snprintf(patched_names[npatched], 64, "%s", name);
			patched_addr[npatched++] = s->st_value;
			s->st_name = 0xfffffff0u;
		}
	}
	ASSERT(npatched >= 3);
	ASSERT_OK(write_file(path_in(p, "badnames"), buf, len));
	free(buf);
	st = lupe_symtab__load(p, -1, NULL);
	ASSERT(st);
	lupe_symtab__stats(st, &stats);
	ASSERT_EQ(stats.bad_symbols, npatched);
	/* No lookup returns a dropped name; the other symbols are intact. */
	for (size_t i = 0; i < npatched; i++) {
		const char *n = lupe_symtab__lookup(st, patched_addr[i], NULL);

		ASSERT(!n || strcmp(n, patched_names[i]) != 0);
	}
	{
		struct nmlist l;

		ASSERT_OK(nm_load(&l, "", b->c));
		for (size_t i = 0; i < l.n; i++) {
			bool was_patched = false;
			uint64_t off = 1;
			const char *n;

			if (!is_func_type(l.s[i].type) || !l.s[i].size ||
			    strncmp(l.s[i].name, "fx_", 3) != 0)
				continue;
			for (size_t j = 0; j < npatched; j++)
				was_patched |= patched_addr[j] == l.s[i].addr;
			if (was_patched)
				continue;
			n = lupe_symtab__lookup(st, l.s[i].addr, &off);
			if (!n || !nm_has(&l, l.s[i].addr, n) || off != 0) {
				nm_free(&l);
				lupe_symtab__free(st);
				FAIL("%s: got %s", l.s[i].name, n ? n : "(null)");
			}
			kept_checked++;
		}
		nm_free(&l);
	}
	lupe_symtab__free(st);
	ASSERT(kept_checked >= 3);
}

TEST(symtab_unterminated_string_table)
{
	const struct fixture_bins *b;
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;
	Elf64_Shdr *symsh, *strsh;
	char p[PATH_MAX];
	size_t len, expect_bad = 0;
	char *buf;

	NEED_FIXTURES(b);
	buf = read_file(b->c, &len);
	ASSERT(buf);
	ASSERT((symsh = find_shdr(buf, SHT_SYMTAB)));
	strsh = (Elf64_Shdr *)(buf + ((Elf64_Ehdr *)buf)->e_shoff +
			       (size_t)symsh->sh_link * ((Elf64_Ehdr *)buf)->e_shentsize);
	/* Function names that ran to the end of the table (tail-merged names share it) now run
	 * off it: those symbols must be dropped, the others kept. */
	for (size_t i = 0; i < symsh->sh_size / sizeof(Elf64_Sym); i++) {
		Elf64_Sym *s = (Elf64_Sym *)(buf + symsh->sh_offset) + i;
		int type = ELF64_ST_TYPE(s->st_info);

		if ((type == STT_FUNC || type == STT_GNU_IFUNC) && s->st_shndx != SHN_UNDEF &&
		    s->st_name < strsh->sh_size - 1 &&
		    s->st_name + strlen(buf + strsh->sh_offset + s->st_name) == strsh->sh_size - 1)
			expect_bad++;
	}
	memset(buf + strsh->sh_offset + strsh->sh_size - 1, 'x', 1);
	ASSERT_OK(write_file(path_in(p, "unterminated"), buf, len));
	free(buf);
	st = lupe_symtab__load(p, -1, NULL);
	ASSERT(st);
	lupe_symtab__stats(st, &stats);
	lupe_symtab__free(st);
	ASSERT(stats.symbols > 0);
	ASSERT_EQ(stats.bad_symbols, expect_bad);
}

TEST(symtab_bad_links_and_offsets)
{
	const struct fixture_bins *b;
	char p[PATH_MAX];
	Elf64_Shdr *symsh;
	size_t len;
	char *buf;

	NEED_FIXTURES(b);
	buf = read_file(b->c, &len);
	ASSERT(buf);
	ASSERT((symsh = find_shdr(buf, SHT_SYMTAB)));
	/* Linked to a section that is no string table. */
	symsh->sh_link = 1;
	ASSERT_OK(write_file(path_in(p, "badlink"), buf, len));
	ASSERT(load_fails_with(p, EINVAL, EINVAL));
	/* Linked to a section that does not exist. */
	symsh->sh_link = 30000;
	ASSERT_OK(write_file(p, buf, len));
	ASSERT(load_fails_with(p, EINVAL, EINVAL));
	free(buf);
	buf = read_file(b->c, &len);
	ASSERT(buf);
	symsh = find_shdr(buf, SHT_SYMTAB);
	/* Symbol data past the end of the file. */
	symsh->sh_offset = len + 4096;
	ASSERT_OK(write_file(path_in(p, "badoffset"), buf, len));
	ASSERT(load_fails_with(p, EINVAL, EINVAL));
	symsh->sh_offset = (uint64_t)-64;
	ASSERT_OK(write_file(p, buf, len));
	ASSERT(load_fails_with(p, EINVAL, EINVAL));
	free(buf);
}

TEST(symtab_drops_overflowing_sizes)
{
	const struct fixture_bins *b;
	struct lupe_symtab_stats stats;
	struct lupe_symtab *st;
	Elf64_Shdr *symsh;
	char p[PATH_MAX];
	size_t len;
	int patched = 0;
	char *buf;

	NEED_FIXTURES(b);
	buf = read_file(b->c, &len);
	ASSERT(buf);
	ASSERT((symsh = find_shdr(buf, SHT_SYMTAB)));
	for (size_t i = 0; i < symsh->sh_size / sizeof(Elf64_Sym) && patched < 2; i++) {
		Elf64_Sym *s = (Elf64_Sym *)(buf + symsh->sh_offset) + i;

		if (ELF64_ST_TYPE(s->st_info) == STT_FUNC && s->st_value && s->st_size) {
			s->st_size = UINT64_MAX - 8;
			patched++;
		}
	}
	ASSERT_EQ(patched, 2);
	ASSERT_OK(write_file(path_in(p, "bigsize"), buf, len));
	free(buf);
	st = lupe_symtab__load(p, -1, NULL);
	ASSERT(st);
	lupe_symtab__stats(st, &stats);
	lupe_symtab__free(st);
	ASSERT_EQ(stats.bad_symbols, 2);
}

/* Random byte flips in the headers and tables: errors or tables, never a crash (ASan). */
TEST(symtab_survives_corruption)
{
	const struct fixture_bins *b;
	char p[PATH_MAX];
	size_t len, loaded = 0;
	char *orig, *buf;
	unsigned seed = 12345;

	NEED_FIXTURES(b);
	orig = read_file(b->c, &len);
	ASSERT(orig);
	buf = malloc(len);
	ASSERT(buf);
	path_in(p, "fuzz");
	for (int iter = 0; iter < 300; iter++) {
		struct lupe_symtab *st;
		Elf64_Ehdr *eh = (Elf64_Ehdr *)orig;
		size_t shtab = eh->e_shoff, shlen = (size_t)eh->e_shnum * eh->e_shentsize;

		memcpy(buf, orig, len);
		for (int k = 0; k < 8; k++) {
			size_t at;

			seed = seed * 1103515245u + 12345u;
			/* Half in the section headers, half in the ELF header and elsewhere. */
			at = (k & 1) ? shtab + (seed >> 8) % shlen : (seed >> 8) % (k < 4 ? 64 : len);
			buf[at] = (char)(seed >> 3);
		}
		if (write_file(p, buf, len))
			break;
		st = lupe_symtab__load(p, -1, NULL);
		if (st) {
			for (uint64_t a = 0; a < 0x3000; a += 7)
				lupe_symtab__lookup(st, a, NULL);
			loaded++;
		}
		lupe_symtab__free(st);
	}
	free(buf);
	free(orig);
	printf("    %zu of 300 corrupted files loaded\n", loaded);
}

/* ---- kallsyms ------------------------------------------------------------------------- */

static void fixture_kallsyms(char *p)
{
	snprintf(p, PATH_MAX, "%s/symbolize/kallsyms", fixtures());
}

#define ASSERT_KSYM(ks, addr, want_name, want_off, want_mod)                \
	do {                                                                \
		const char *_m = "unset", *_n;                              \
		uint64_t _o = 12345;                                        \
		_n = lupe_ksyms__lookup(ks, addr, &_o, &_m);                \
		ASSERT_STREQ(_n, want_name);                                \
		if (_o != (uint64_t)(want_off))                             \
			FAIL("%s at %#llx: offset %#llx", want_name,       \
			     (unsigned long long)(addr), (unsigned long long)_o); \
		if ((want_mod) == NULL ? _m != NULL                         \
				       : (!_m || strcmp(_m, (want_mod) ? (want_mod) : ""))) \
			FAIL("%s: module %s", want_name, _m ? _m : "(null)"); \
	} while (0)

TEST(ksyms_fixture)
{
	struct lupe_ksyms_stats stats;
	struct lupe_ksyms *ks;
	char p[PATH_MAX];
	const char *none = NULL;

	fixture_kallsyms(p);
	ks = lupe_ksyms__load(p);
	ASSERT(ks);
	/* Aliases: the global beats the local, and fewer leading underscores win. */
	ASSERT_KSYM(ks, 0xffffffff81000000ull, "startup_64", 0, none);
	ASSERT_KSYM(ks, 0xffffffff810000ffull, "startup_64", 0xff, none);
	ASSERT_KSYM(ks, 0xffffffff81000100ull, "secondary_startup", 0, none);
	ASSERT_KSYM(ks, 0xffffffff81000250ull, "weak_fn", 0x50, none);
	ASSERT_KSYM(ks, 0xffffffff81000400ull, "__x64_sys_read", 0, none);
	ASSERT_KSYM(ks, 0xffffffff81000501ull, "vfs_read", 1, none);
	/* Malformed lines are skipped, not boundaries. */
	ASSERT_KSYM(ks, 0xffffffff81000700ull, "vfs_read", 0x200, none);
	ASSERT_KSYM(ks, 0xffffffff81000900ull, "local_weak", 0, none);
	ASSERT_KSYM(ks, 0xffffffffbfffffffull, "local_weak", 0xffffffffbfffffffull - 0xffffffff81000900ull, none);
	/* Neighbours one byte apart: a double would merge them. */
	ASSERT_KSYM(ks, 0xffffffffc0a01000ull, "mod_fn_a", 0, "mymod");
	ASSERT_KSYM(ks, 0xffffffffc0a01001ull, "mod_fn_b", 0, "mymod");
	ASSERT_KSYM(ks, 0xffffffffc0a01fffull, "mod_fn_b", 0xffe, "mymod");
	ASSERT_KSYM(ks, 0xffffffffc0a02000ull, "other_fn", 0, "othermod");
	ASSERT_KSYM(ks, 0xffffffffc0a02011ull, "bpf_prog_6deef7357e7b4530_sd_devices", 1, "bpf");
	ASSERT_KSYM(ks, 0xffffffffffffffffull, "top_sym", 0xff, none);
	/* Data symbols bound the text before them. */
	ASSERT(lupe_ksyms__lookup(ks, 0xffffffff81000300ull, NULL, NULL) == NULL);
	ASSERT(lupe_ksyms__lookup(ks, 0xffffffff810003ffull, NULL, NULL) == NULL);
	ASSERT(lupe_ksyms__lookup(ks, 0xffffffff81000800ull, NULL, NULL) == NULL);
	ASSERT(lupe_ksyms__lookup(ks, 0x1000, NULL, NULL) == NULL);
	lupe_ksyms__stats(ks, &stats);
	ASSERT_EQ(lupe_ksyms__count(ks), 11);
	ASSERT_EQ(stats.symbols, 11);
	ASSERT_EQ(stats.aliases, 2);
	ASSERT_EQ(stats.skipped, 2);
	ASSERT_EQ(stats.malformed, 6);
	ASSERT_EQ(stats.lookups, 19);
	ASSERT_EQ(stats.misses, 4);
	lupe_ksyms__free(ks);
}

TEST(ksyms_bad_files)
{
	char p[PATH_MAX];

	if (!workdir())
		FAIL("no temp dir");
	errno = 0;
	ASSERT(lupe_ksyms__load(path_in(p, "no-such-kallsyms")) == NULL);
	ASSERT_EQ(errno, ENOENT);
	ASSERT_OK(write_file(path_in(p, "ks_empty"), "", 0));
	ASSERT(lupe_ksyms__load(p) == NULL);
	ASSERT_EQ(errno, ENODATA);
	ASSERT_OK(write_file(path_in(p, "ks_garbage"), "\x7f" "ELF\0\1\2\n\n zz\n", 13));
	ASSERT(lupe_ksyms__load(p) == NULL);
	ASSERT_EQ(errno, ENODATA);
	/* What an unprivileged reader sees with kptr_restrict. */
	{
		const char *z = "0000000000000000 T _stext\n0000000000000000 t foo\t[m]\n";

		ASSERT_OK(write_file(path_in(p, "ks_zero"), z, strlen(z)));
	}
	ASSERT(lupe_ksyms__load(p) == NULL);
	ASSERT_EQ(errno, EPERM);
	ASSERT(lupe_ksyms__load(work) == NULL);
	ASSERT_EQ(errno, EISDIR);
	/* No trailing newline, one symbol. */
	ASSERT_OK(write_file(path_in(p, "ks_one"), "ffffffff81000000 T only",
			     strlen("ffffffff81000000 T only")));
	{
		struct lupe_ksyms *ks = lupe_ksyms__load(p);
		uint64_t off = 9;

		ASSERT(ks);
		ASSERT_STREQ(lupe_ksyms__lookup(ks, 0xffffffff81000010ull, &off, NULL), "only");
		ASSERT_EQ(off, 0x10);
		lupe_ksyms__free(ks);
	}
	lupe_ksyms__free(NULL);
	lupe_symtab__free(NULL);
}

/* An independent parse of a kallsyms copy: every text line's address gives offset 0, the
 * line's module, and its name or another text name at the same address. */
struct kline {
	unsigned long long addr;
	char *name;
};

static int kline_cmp(const void *pa, const void *pb)
{
	const struct kline *a = pa, *b = pb;

	if (a->addr != b->addr)
		return a->addr < b->addr ? -1 : 1;
	return strcmp(a->name, b->name);
}

static bool kline_has(const struct kline *v, size_t n, unsigned long long addr, const char *name)
{
	struct kline key = { addr, (char *)name };

	return bsearch(&key, v, n, sizeof(*v), kline_cmp) != NULL;
}

TEST(ksyms_live_copy_every_symbol)
{
	char copy[PATH_MAX], line[1024];
	struct lupe_ksyms_stats stats;
	struct lupe_ksyms *ks;
	struct kline *v = NULL;
	size_t n = 0, cap = 0, bad = 0, nz = 0;
	FILE *f;

	if (access("/proc/kallsyms", R_OK) || !workdir())
		SKIP("/proc/kallsyms not readable");
	ASSERT_OK(lupe_test_run("cat /proc/kallsyms > '%s'", path_in(copy, "kallsyms_copy")));
	ks = lupe_ksyms__load(copy);
	if (!ks && errno == EPERM)
		SKIP("kallsyms addresses hidden (kptr_restrict)");
	ASSERT(ks);
	f = fopen(copy, "r");
	ASSERT(f);
	while (fgets(line, sizeof(line), f)) {
		char type, name[600];
		unsigned long long addr;

		if (sscanf(line, "%llx %c %599s", &addr, &type, name) != 3 || !strchr("tTwW", type))
			continue;
		if (n == cap) {
			struct kline *nv;

			cap = cap ? 2 * cap : 65536;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv)
				break;
			v = nv;
		}
		v[n].addr = addr;
		v[n].name = strdup(name);
		if (!v[n].name)
			break;
		nz += addr != 0;
		n++;
	}
	qsort(v, n, sizeof(*v), kline_cmp);
	rewind(f);
	while (fgets(line, sizeof(line), f)) {
		char type, name[600], mod[600] = "";
		unsigned long long addr;
		uint64_t off = 1;
		const char *m = NULL, *got;
		int fields = sscanf(line, "%llx %c %599s [%599[^]]]", &addr, &type, name, mod);

		if (fields < 3 || !strchr("tTwW", type))
			continue;
		got = lupe_ksyms__lookup(ks, addr, &off, &m);
		if (!got || off != 0 || (fields == 4 ? !m || strcmp(m, mod) : m != NULL) ||
		    (strcmp(got, name) != 0 && !kline_has(v, n, addr, got))) {
			if (bad++ < 5)
				printf("    %llx %s [%s]: got %s+%llu [%s]\n", addr, name, mod,
				       got ? got : "(null)", (unsigned long long)off, m ? m : "");
		}
	}
	fclose(f);
	lupe_ksyms__stats(ks, &stats);
	lupe_ksyms__free(ks);
	for (size_t i = 0; i < n; i++)
		free(v[i].name);
	free(v);
	ASSERT(nz > 0);
	ASSERT_EQ(bad, 0);
	ASSERT_EQ(stats.symbols + stats.aliases, n);
	ASSERT_EQ(stats.malformed, 0);
}

TEST(ksyms_live_vfs_read)
{
	struct lupe_ksyms *ks;
	unsigned long long addr;
	uint64_t off = 1;
	const char *mod = "unset";
	char *out;

	if (access("/proc/kallsyms", R_OK))
		SKIP("/proc/kallsyms not readable");
	out = capture("grep ' vfs_read$' /proc/kallsyms");
	if (!out)
		SKIP("no vfs_read in /proc/kallsyms");
	addr = strtoull(out, NULL, 16);
	free(out);
	if (!addr)
		SKIP("kallsyms addresses hidden (kptr_restrict)");
	ks = lupe_ksyms__load(NULL);
	ASSERT(ks);
	ASSERT_STREQ(lupe_ksyms__lookup(ks, addr, &off, &mod), "vfs_read");
	ASSERT_EQ(off, 0);
	ASSERT(mod == NULL);
	ASSERT_STREQ(lupe_ksyms__lookup(ks, addr + 5, &off, NULL), "vfs_read");
	ASSERT_EQ(off, 5);
	lupe_ksyms__free(ks);
}
