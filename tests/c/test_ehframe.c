/* ehframe: stack deltas against readelf --debug-dump=frames-interp (binutils' own CFA
 * interpreter, an independent oracle) on system libraries and on binaries built here with
 * GCC, Clang and G++, hand-computed rules for hand-written CFI (fixtures/ehframe/cfi.S)
 * and hand-built sections, and bad input: every truncation, seeded mutations, crafted
 * pointers. */
#include "ehframe.h"
#include "elfinfo.h"
#include "lupe_test.h"
#include "unwind.h"

#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------- */

static const char *work_dir(void)
{
	static char dir[PATH_MAX];

	if (!dir[0]) {
		const char *b = getenv("LUPE_BUILD");

		if (b)
			snprintf(dir, sizeof(dir), "%s/ehframe-test", b);
		else
			snprintf(dir, sizeof(dir), "/tmp/lupe-ehframe-test-%d", (int)getpid());
		mkdir(dir, 0755);
	}
	return dir;
}

static char *wpath(char *buf, const char *name)
{
	snprintf(buf, PATH_MAX, "%s/%s", work_dir(), name);
	return buf;
}

static char *fixture(char *buf, const char *name)
{
	const char *f = getenv("LUPE_FIXTURES");

	snprintf(buf, PATH_MAX, "%s/ehframe/%s", f ? f : "tests/fixtures", name);
	return buf;
}

static bool have(const char *tool)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
	return system(cmd) == 0;
}

/* Compiles a fixture into the work directory, once per process (several tests share a
 * binary). Returns the output path in out, or NULL when the compiler is missing or fails. */
static const char *build(char *out, const char *name, const char *cc, const char *src,
			 const char *flags)
{
	static char done[16][64];
	static size_t ndone;
	char in[PATH_MAX];
	size_t i;

	wpath(out, name);
	for (i = 0; i < ndone; i++)
		if (strcmp(done[i], name) == 0)
			return out;
	if (!have(cc))
		return NULL;
	if (lupe_test_run("%s %s -o '%s' '%s' 2>&1", cc, flags, out, fixture(in, src)) != 0)
		return NULL;
	if (ndone < 16)
		snprintf(done[ndone++], sizeof(done[0]), "%s", name);
	return out;
}

static int extract_path(const char *path, const struct lupe_ehframe_opts *o,
			struct lupe_interval_data *d, struct lupe_ehframe_stats *st)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

	if (fd < 0)
		return -errno;
	rc = lupe_ehframe_extract_fd(fd, o, d, st);
	close(fd);
	return rc;
}

/* A whole file, malloc'd. */
static uint8_t *slurp(const char *path, size_t *len)
{
	struct stat sb;
	uint8_t *buf = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &sb) != 0)
		goto out;
	buf = malloc(sb.st_size ? (size_t)sb.st_size : 1);
	if (buf && pread(fd, buf, (size_t)sb.st_size, 0) != sb.st_size) {
		free(buf);
		buf = NULL;
	}
	*len = (size_t)sb.st_size;
out:
	if (fd >= 0)
		close(fd);
	return buf;
}

static int spit(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, buf, len);
	close(fd);
	return n == (ssize_t)len ? 0 : -EIO;
}

/* A copy of section name of an ELF file (malloc'd) and its address, via libelf. */
static uint8_t *load_section(const char *path, const char *name, uint64_t *vaddr, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint8_t *copy = NULL;
	Elf_Scn *scn = NULL;
	size_t shstrndx;
	Elf *elf;

	if (fd < 0)
		return NULL;
	elf_version(EV_CURRENT);
	elf = elf_begin(fd, ELF_C_READ, NULL);
	if (elf && elf_getshdrstrndx(elf, &shstrndx) == 0) {
		while ((scn = elf_nextscn(elf, scn))) {
			GElf_Shdr sh;
			const char *n;
			Elf_Data *d;

			if (!gelf_getshdr(scn, &sh) || !(n = elf_strptr(elf, shstrndx, sh.sh_name)) ||
			    strcmp(n, name) != 0 || !(d = elf_rawdata(scn, NULL)))
				continue;
			copy = malloc(d->d_size ? d->d_size : 1);
			if (copy) {
				memcpy(copy, d->d_buf, d->d_size);
				*len = d->d_size;
				*vaddr = sh.sh_addr;
			}
			break;
		}
	}
	elf_end(elf);
	close(fd);
	return copy;
}

/* The address of a symbol, from nm (an oracle independent of our code). */
static uint64_t sym_addr(const char *path, const char *sym)
{
	char cmd[2 * PATH_MAX], line[512], name[256], type;
	unsigned long long a;
	uint64_t found = 0;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "nm '%s' 2>/dev/null", path);
	p = popen(cmd, "r");
	if (!p)
		return 0;
	while (fgets(line, sizeof(line), p)) {
		if (sscanf(line, "%llx %c %255s", &a, &type, name) == 3 && strcmp(name, sym) == 0)
			found = a;
	}
	pclose(p);
	return found;
}

/* Structural checks every successful result must pass: strictly increasing addresses,
 * no two equal neighbours, known opcodes, commands without rbp rules. */
static const char *sanity(const struct lupe_interval_data *d)
{
	size_t i;

	if (!d->count || !d->deltas)
		return "empty result";
	for (i = 0; i < d->count; i++) {
		const struct lupe_stack_delta *x = &d->deltas[i];

		if (i && x->address <= d->deltas[i - 1].address)
			return "addresses not strictly increasing";
		if (i && x->cfa_opcode == d->deltas[i - 1].cfa_opcode &&
		    x->cfa_param == d->deltas[i - 1].cfa_param &&
		    x->fp_opcode == d->deltas[i - 1].fp_opcode &&
		    x->fp_param == d->deltas[i - 1].fp_param && x->flags == d->deltas[i - 1].flags)
			return "equal neighbours not merged";
		if (x->cfa_opcode > LUPE_CFA_DEREF_FP || x->fp_opcode > LUPE_FP_UNDEFINED)
			return "unknown opcode";
		if (x->cfa_opcode == LUPE_CFA_CMD &&
		    (x->cfa_param > LUPE_CMD_SIGNAL || x->cfa_param < 0 || x->fp_opcode || x->fp_param))
			return "bad command";
	}
	if (d->deltas[d->count - 1].cfa_opcode != LUPE_CFA_CMD ||
	    d->deltas[d->count - 1].cfa_param != LUPE_CMD_INVALID)
		return "the last delta does not end the last FDE";
	return NULL;
}

static bool same_data(const struct lupe_interval_data *a, const struct lupe_interval_data *b)
{
	return a->count == b->count &&
	       memcmp(a->deltas, b->deltas, a->count * sizeof(*a->deltas)) == 0;
}

static void describe(const struct lupe_stack_delta *d, char *buf, size_t len)
{
	char cfa[32], fp[32];

	if (!d) {
		snprintf(buf, len, "(none)");
		return;
	}
	snprintf(buf, len, "%s %s", lupe_ehframe_format_cfa(d, cfa, sizeof(cfa)),
		 lupe_ehframe_format_fp(d, fp, sizeof(fp)));
}

/* ---- the readelf oracle -------------------------------------------------------------- */

struct rrow {
	uint64_t loc;
	char cfa[24], rbp[24], ra[24];
};

struct rcie {
	uint64_t off;
	bool debug, signal, has_init;
	struct rrow init;
};

struct rfde {
	uint64_t begin, end, cie;
	bool debug;
	size_t first, nrows;
};

struct oracle {
	struct rfde *fdes;
	size_t nfdes;
	struct rrow *rows;
	size_t nrows;
	struct rcie *cies;
	size_t ncies;
};

static void oracle_free(struct oracle *o)
{
	free(o->fdes);
	free(o->rows);
	free(o->cies);
	memset(o, 0, sizeof(*o));
}

#define GROW(arr, n) \
	((n) % 1024 == 0 ? ((arr) = realloc((arr), ((n) + 1024) * sizeof(*(arr)))) != NULL : true)

/* Splits a table line on blanks; "r3 (rbx)" stays one field. Returns the count. */
static int fields(char *line, char **f, int max)
{
	int n = 0;
	char *tok, *save;

	for (tok = strtok_r(line, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
		if (tok[0] == '(' && n > 0) {
			tok[-1] = ' ';  /* rejoin with the previous field */
			continue;
		}
		if (n < max)
			f[n++] = tok;
	}
	return n;
}

/* Parses `readelf --debug-dump=frames-interp path`. Returns 0 or -1. */
static int oracle_load(const char *path, struct oracle *o)
{
	char cmd[2 * PATH_MAX], line[1024], aug[32], *f[64];
	int cfa_col = -1, rbp_col = -1, ra_col = -1, nf, i;
	unsigned long long a, b, c, d, e, end;
	enum { NONE, CIE, FDE } block = NONE;
	bool debug = false;
	FILE *p;

	memset(o, 0, sizeof(*o));
	/* -wN: do not follow debug links (a missing debug file makes readelf exit 1). */
	snprintf(cmd, sizeof(cmd), "readelf -wN --debug-dump=frames-interp '%s' 2>/dev/null", path);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	while (fgets(line, sizeof(line), p)) {
		if (strstr(line, "Contents of the .eh_frame section")) {
			debug = false;
			continue;
		}
		if (strstr(line, "Contents of the .debug_frame section")) {
			debug = true;
			continue;
		}
		if (line[0] == '\n') {
			block = NONE;
			continue;
		}
		if (strstr(line, " CIE ") && sscanf(line, "%llx %llx %llx CIE", &a, &b, &c) == 3) {
			/* The augmentation string between quotes ("" for none). */
			if (sscanf(strstr(line, " CIE ") + 5, "\"%31[^\"]\"", aug) != 1)
				aug[0] = '\0';
			if (!GROW(o->cies, o->ncies))
				goto fail;
			o->cies[o->ncies] = (struct rcie){ .off = a, .debug = debug,
							   .signal = strchr(aug, 'S') != NULL };
			o->ncies++;
			block = CIE;
			cfa_col = rbp_col = ra_col = -1;
			continue;
		}
		if (sscanf(line, "%llx %llx %llx FDE cie=%llx pc=%llx..%llx", &a, &b, &c, &d, &e,
			   &end) == 6) {
			if (!GROW(o->fdes, o->nfdes))
				goto fail;
			o->fdes[o->nfdes] = (struct rfde){ e, end, d, debug, o->nrows, 0 };
			o->nfdes++;
			block = FDE;
			cfa_col = rbp_col = ra_col = -1;
			continue;
		}
		if (block == NONE)
			continue;
		nf = fields(line, f, 64);
		if (nf > 1 && strcmp(f[0], "LOC") == 0) {
			for (i = 0; i < nf; i++) {
				if (strcmp(f[i], "CFA") == 0)
					cfa_col = i;
				else if (strcmp(f[i], "rbp") == 0)
					rbp_col = i;
				else if (strcmp(f[i], "ra") == 0)
					ra_col = i;
			}
			continue;
		}
		if (nf < 2 || strlen(f[0]) < 8 || cfa_col < 0 || ra_col < 0 ||
		    sscanf(f[0], "%llx", &a) != 1 || nf <= ra_col || nf <= cfa_col)
			continue;
		{
			struct rrow r = { .loc = a };

			snprintf(r.cfa, sizeof(r.cfa), "%s", f[cfa_col]);
			snprintf(r.ra, sizeof(r.ra), "%s", f[ra_col]);
			snprintf(r.rbp, sizeof(r.rbp), "%s", rbp_col >= 0 && rbp_col < nf ? f[rbp_col] : "");
			if (block == CIE) {
				o->cies[o->ncies - 1].init = r;
				o->cies[o->ncies - 1].has_init = true;
			} else {
				if (!GROW(o->rows, o->nrows))
					goto fail;
				o->rows[o->nrows++] = r;
				o->fdes[o->nfdes - 1].nrows++;
			}
		}
	}
	if (pclose(p) != 0) {
		oracle_free(o);
		return -1;
	}
	return 0;
fail:
	pclose(p);
	oracle_free(o);
	return -1;
}

static const struct rcie *oracle_cie(const struct oracle *o, uint64_t off, bool debug)
{
	size_t i;

	for (i = 0; i < o->ncies; i++)
		if (o->cies[i].off == off && o->cies[i].debug == debug)
			return &o->cies[i];
	return NULL;
}

/* Does d match what readelf's row says? The rules of the encoding (bpf/unwind.h): the
 * return address must be at CFA - 8 ("c-8"), "u" there is the outermost frame; the CFA
 * must be rsp + n (n >= 8) or rbp + n; an expression ("exp") is a PLT stub, a
 * dereference or invalid; rbp saved at "c+n" is AT_CFA n, "s" or no column is SAME, "u"
 * (readelf's mark for both "never set" and DW_CFA_undefined) SAME or UNDEFINED, anything
 * else (register, expression, val_offset) UNDEFINED. */
static bool row_matches(const struct rrow *r, bool signal, const struct lupe_stack_delta *d)
{
	long long n;
	char reg[8];

	if (!d)
		return false;
	if (signal)
		return d->cfa_opcode == LUPE_CFA_CMD && d->cfa_param == LUPE_CMD_SIGNAL;
	if (strcmp(r->ra, "u") == 0)
		return d->cfa_opcode == LUPE_CFA_CMD && d->cfa_param == LUPE_CMD_STOP;
	if (strcmp(r->ra, "c-8") != 0)
		return d->cfa_opcode == LUPE_CFA_CMD && d->cfa_param == LUPE_CMD_INVALID;
	if (strcmp(r->cfa, "exp") == 0) {
		if (d->cfa_opcode == LUPE_CFA_CMD)
			return d->cfa_param == LUPE_CMD_PLT || d->cfa_param == LUPE_CMD_INVALID;
		if (d->cfa_opcode != LUPE_CFA_DEREF_SP && d->cfa_opcode != LUPE_CFA_DEREF_FP &&
		    d->cfa_opcode != LUPE_CFA_SP && d->cfa_opcode != LUPE_CFA_FP)
			return false;
	} else if (sscanf(r->cfa, "%7[a-z0-9]%lld", reg, &n) == 2 &&
		   ((strcmp(reg, "rsp") == 0 && n >= 8) || strcmp(reg, "rbp") == 0)) {
		if (d->cfa_opcode != (strcmp(reg, "rsp") == 0 ? LUPE_CFA_SP : LUPE_CFA_FP) ||
		    d->cfa_param != n)
			return false;
	} else {
		return d->cfa_opcode == LUPE_CFA_CMD && d->cfa_param == LUPE_CMD_INVALID;
	}
	if (r->rbp[0] == '\0' || strcmp(r->rbp, "s") == 0)
		return d->fp_opcode == LUPE_FP_SAME;
	if (strcmp(r->rbp, "u") == 0)
		return d->fp_opcode == LUPE_FP_SAME || d->fp_opcode == LUPE_FP_UNDEFINED;
	if (r->rbp[0] == 'c' && sscanf(r->rbp + 1, "%lld", &n) == 1)
		return d->fp_opcode == LUPE_FP_AT_CFA && d->fp_param == n;
	return d->fp_opcode == LUPE_FP_UNDEFINED;
}

static int rfde_cmp(const void *a, const void *b)
{
	const struct rfde *x = a, *y = b;

	return x->begin < y->begin ? -1 : x->begin > y->begin;
}

struct oracle_result {
	size_t fdes_checked, rows_checked, mismatches;
	size_t u_undefined;  /* rbp "u" rows we call UNDEFINED (rather than SAME) */
};

/* Checks every row of every FDE readelf shows (that we are meant to use) against d. */
static int oracle_check(const char *path, const struct lupe_interval_data *d,
			const uint64_t *skip, size_t nskip, struct oracle_result *res)
{
	struct lupe_elfinfo ei;
	struct oracle o;
	struct rfde *eh = NULL, *kept = NULL;
	size_t neh = 0, nkept = 0, i, j, k;
	char want[128], got[128];
	int fd, rc = -1;

	memset(res, 0, sizeof(*res));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || lupe_elfinfo_from_fd(fd, &ei) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	if (oracle_load(path, &o) != 0)
		return -1;
	eh = calloc(o.nfdes + 1, sizeof(*eh));
	kept = calloc(o.nfdes + 1, sizeof(*kept));
	if (!eh || !kept)
		goto out;
	for (i = 0; i < o.nfdes; i++)
		if (!o.fdes[i].debug)
			eh[neh++] = o.fdes[i];
	qsort(eh, neh, sizeof(*eh), rfde_cmp);

	/* Which FDEs we are meant to use: not empty, inside an executable segment, not a
	 * .debug_frame copy of an .eh_frame FDE, not in the caller's skip list. */
	for (i = 0; i < o.nfdes; i++) {
		struct rfde *f = &o.fdes[i];
		bool inside = false, dup = false;

		if (f->begin >= f->end)
			continue;
		for (k = 0; k < ei.nxsegs; k++)
			if (f->begin >= ei.xsegs[k].vaddr &&
			    f->end <= ei.xsegs[k].vaddr + ei.xsegs[k].memsz)
				inside = true;
		for (k = 0; k < nskip; k++)
			if (skip[k] == f->begin)
				inside = false;
		if (!inside)
			continue;
		if (f->debug) {
			for (k = 0; k < neh; k++)
				if (eh[k].begin < f->end && f->begin < eh[k].end)
					dup = true;
			if (dup)
				continue;
		}
		kept[nkept++] = *f;
	}
	qsort(kept, nkept, sizeof(*kept), rfde_cmp);

	for (i = 0; i < nkept; i++) {
		const struct rfde *f = &kept[i];
		const struct rcie *cie = oracle_cie(&o, f->cie, f->debug);
		const struct rrow *last = NULL;
		struct rrow init;
		const struct lupe_stack_delta *x;
		bool signal = cie && cie->signal;

		if (!cie) {
			printf("    readelf: FDE at %#llx names an unknown CIE\n",
			       (unsigned long long)f->begin);
			goto out;
		}
		res->fdes_checked++;
		if (f->nrows == 0) {
			/* No instructions: the CIE's initial rules over the whole range (a
			 * CIE without rows defines no CFA: "?" expects invalid). */
			init = cie->has_init ? cie->init : (struct rrow){ .cfa = "?", .ra = "?" };
			init.loc = f->begin;
		}
		for (j = 0; j < (f->nrows ? f->nrows : 1); j++) {
			const struct rrow *r = f->nrows ? &o.rows[f->first + j] : &init;

			/* Rows at the same address: the last one holds. */
			if (j + 1 < f->nrows && o.rows[f->first + j + 1].loc == r->loc)
				continue;
			last = r;
			if (r->loc < f->begin || r->loc >= f->end)
				continue;
			x = lupe_ehframe_find(d, r->loc);
			res->rows_checked++;
			if (x && strcmp(r->rbp, "u") == 0 && x->cfa_opcode != LUPE_CFA_CMD &&
			    x->fp_opcode == LUPE_FP_UNDEFINED)
				res->u_undefined++;
			if (!row_matches(r, signal, x) && res->mismatches++ < 10) {
				describe(x, got, sizeof(got));
				printf("    %#llx: readelf cfa=%s rbp=%s ra=%s%s, ours %s\n",
				       (unsigned long long)r->loc, r->cfa, r->rbp[0] ? r->rbp : "-",
				       r->ra, signal ? " (signal)" : "", got);
			}
		}
		/* The last rule holds to the end of the FDE, and then nothing, unless
		 * another FDE starts right there. */
		x = lupe_ehframe_find(d, f->end - 1);
		if (last && !row_matches(last, signal, x) && res->mismatches++ < 10) {
			describe(x, got, sizeof(got));
			printf("    %#llx (last byte of the FDE): ours %s\n",
			       (unsigned long long)(f->end - 1), got);
		}
		if (i + 1 == nkept || kept[i + 1].begin > f->end) {
			x = lupe_ehframe_find(d, f->end);
			if (!x || x->cfa_opcode != LUPE_CFA_CMD || x->cfa_param != LUPE_CMD_INVALID) {
				describe(x, want, sizeof(want));
				if (res->mismatches++ < 10)
					printf("    %#llx (end of FDE): ours %s, want invalid\n",
					       (unsigned long long)f->end, want);
			}
		}
	}
	rc = 0;
out:
	free(eh);
	free(kept);
	oracle_free(&o);
	return rc;
}

/* Extracts path and compares it with readelf; FAILs inside. */
#define CHECK_AGAINST_READELF(path, skip, nskip, st_out)                                    \
	do {                                                                                \
		struct lupe_interval_data _d;                                               \
		struct oracle_result _r;                                                    \
		const char *_why;                                                           \
		int _rc;                                                                    \
                                                                                            \
		if (!have("readelf"))                                                       \
			SKIP("readelf is not installed");                                   \
		_rc = extract_path(path, NULL, &_d, st_out);                                \
		if (_rc != 0)                                                               \
			FAIL("'%s': extract: %s", path, strerror(-_rc));                    \
		_why = sanity(&_d);                                                         \
		if (_why) {                                                                 \
			free(_d.deltas);                                                    \
			FAIL("'%s': %s", path, _why);                                       \
		}                                                                           \
		_rc = oracle_check(path, &_d, skip, nskip, &_r);                            \
		free(_d.deltas);                                                            \
		if (_rc != 0)                                                               \
			FAIL("'%s': readelf's table could not be read", path);              \
		printf("    %s: %zu FDEs, %zu rows checked, %zu mismatches, %zu rbp 'u' as " \
		       "undefined\n", path, _r.fdes_checked, _r.rows_checked, _r.mismatches,  \
		       _r.u_undefined);                                                     \
		if (_r.fdes_checked == 0 || _r.rows_checked == 0)                           \
			FAIL("'%s': nothing was compared", path);                           \
		if (_r.mismatches)                                                          \
			FAIL("'%s': %zu rows differ from readelf", path, _r.mismatches);    \
	} while (0)

/* ---- against readelf: system libraries ----------------------------------------------- */

static const char *system_lib(char *buf, const char *name)
{
	const char *dirs[] = { "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64",
			       "/usr/lib64" };
	size_t i;

	for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(buf, PATH_MAX, "%s/%s", dirs[i], name);
		if (access(buf, R_OK) == 0)
			return buf;
	}
	return NULL;
}

TEST(readelf_libc)
{
	char p[PATH_MAX];
	struct lupe_ehframe_stats st;

	if (!system_lib(p, "libc.so.6"))
		SKIP("no libc.so.6");
	CHECK_AGAINST_READELF(p, NULL, 0, &st);
	/* Debian's libc: the PLT stub and __restore_rt's signal frame, no bad entries. */
	ASSERT(st.plt_fdes >= 1);
	ASSERT_EQ(st.signal_fdes, 1);
	ASSERT_EQ(st.bad_fdes, 0);
	ASSERT_EQ(st.bad_cies, 0);
	ASSERT(st.sources & LUPE_EHFRAME_SRC_HDR_TABLE);
	ASSERT(st.deltas <= st.deltas_raw);
}

TEST(readelf_libstdcxx)
{
	char p[PATH_MAX];

	if (!system_lib(p, "libstdc++.so.6"))
		SKIP("no libstdc++.so.6 (apt-get install libstdc++6)");
	CHECK_AGAINST_READELF(p, NULL, 0, NULL);
}

TEST(readelf_ld_so)
{
	char p[PATH_MAX];

	if (!system_lib(p, "ld-linux-x86-64.so.2"))
		SKIP("no ld-linux-x86-64.so.2");
	CHECK_AGAINST_READELF(p, NULL, 0, NULL);
}

/* The vDSO, read from memory as the process manager gives it (and dumped for readelf). */
TEST(readelf_vdso_from_memory)
{
	uintptr_t base = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
	struct lupe_stackdelta_provider *prov;
	struct lupe_interval_data d, ref;
	struct lupe_exe_info info = { .fd = -1, .vdso = true, .path = "[vdso]" };
	char line[512], path[PATH_MAX];
	unsigned long lo = 0, hi = 0;
	FILE *maps;
	int rc;

	if (!base)
		SKIP("no vDSO");
	maps = fopen("/proc/self/maps", "r");
	ASSERT(maps);
	while (fgets(line, sizeof(line), maps))
		if (strstr(line, "[vdso]") && sscanf(line, "%lx-%lx", &lo, &hi) == 2)
			break;
	fclose(maps);
	if (lo != base || hi <= lo)
		SKIP("vDSO not found in /proc/self/maps");
	info.image = (const void *)base;
	info.image_len = hi - lo;
	prov = lupe_ehframe_provider_new();
	ASSERT(prov);
	rc = prov->ops->get_interval_data(prov, &info, &d);
	prov->ops->free(prov);
	ASSERT_OK(rc);
	ASSERT(sanity(&d) == NULL);
	wpath(path, "vdso.so");
	rc = spit(path, (const void *)base, hi - lo);
	if (rc) {
		free(d.deltas);
		FAIL("cannot write %s", path);
	}
	rc = extract_path(path, NULL, &ref, NULL);
	if (rc == 0 && !same_data(&d, &ref))
		rc = -EBADMSG;
	free(d.deltas);
	free(ref.deltas);
	ASSERT_OK(rc);
	CHECK_AGAINST_READELF(path, NULL, 0, NULL);
}

/* ---- against readelf: binaries built here -------------------------------------------- */

TEST(readelf_gcc_omit_frame_pointer)
{
	char p[PATH_MAX];

	if (!build(p, "plain-gcc", "gcc", "plain.c", "-O2 -fomit-frame-pointer"))
		SKIP("gcc cannot build plain.c");
	CHECK_AGAINST_READELF(p, NULL, 0, NULL);
}

TEST(readelf_clang)
{
	char p[PATH_MAX];

	if (!build(p, "plain-clang", "clang", "plain.c", "-O2"))
		SKIP("clang cannot build plain.c");
	CHECK_AGAINST_READELF(p, NULL, 0, NULL);
}

TEST(readelf_clang_frame_pointer)
{
	char p[PATH_MAX];
	struct lupe_ehframe_stats st;
	struct lupe_interval_data d;
	const struct lupe_stack_delta *x;
	uint64_t fib;

	if (!build(p, "plain-clang-fp", "clang", "plain.c", "-O1 -fno-omit-frame-pointer"))
		SKIP("clang cannot build plain.c");
	CHECK_AGAINST_READELF(p, NULL, 0, &st);
	/* With frame pointers, fib's body has its CFA on rbp (push rbp = 1 byte, mov = 3). */
	fib = sym_addr(p, "fib");
	ASSERT(fib);
	ASSERT_OK(extract_path(p, NULL, &d, NULL));
	x = lupe_ehframe_find(&d, fib + 4);
	if (!x || x->cfa_opcode != LUPE_CFA_FP || x->cfa_param != 16 ||
	    x->fp_opcode != LUPE_FP_AT_CFA || x->fp_param != -16) {
		free(d.deltas);
		FAIL("fib+4 is not cfa=rbp+16 rbp=cfa-16");
	}
	free(d.deltas);
}

TEST(readelf_cxx_exceptions)
{
	char p[PATH_MAX];
	struct lupe_ehframe_stats st;

	if (!build(p, "exceptions", "g++", "exceptions.cpp", "-O2"))
		SKIP("g++ cannot build exceptions.cpp");
	CHECK_AGAINST_READELF(p, NULL, 0, &st);
	ASSERT_EQ(st.bad_cies, 0);
	ASSERT(st.cies >= 2);  /* "zR" and "zPLR" */
}

TEST(readelf_async_unwind_tables)
{
	char p[PATH_MAX];

	if (!build(p, "plain-async", "gcc", "plain.c",
		   "-O2 -fasynchronous-unwind-tables -fno-omit-frame-pointer"))
		SKIP("gcc cannot build plain.c");
	CHECK_AGAINST_READELF(p, NULL, 0, NULL);
}

/* GCC emits .debug_frame (not .eh_frame) for code built without unwind tables but with
 * -g. The C runtime objects still bring .eh_frame: both sources are used. */
TEST(readelf_debug_frame)
{
	char p[PATH_MAX];
	struct lupe_ehframe_stats st;
	struct lupe_interval_data d;
	LUPE_OPTS(lupe_ehframe_opts, only_debug, .no_eh_frame = true);
	const struct lupe_stack_delta *x;
	uint64_t fib;

	if (!build(p, "plain-debug-frame", "gcc", "plain.c",
		   "-O2 -g -fno-asynchronous-unwind-tables -fno-exceptions"))
		SKIP("gcc cannot build plain.c");
	CHECK_AGAINST_READELF(p, NULL, 0, &st);
	ASSERT(st.sources & LUPE_EHFRAME_SRC_DEBUG_FRAME);
	/* fib is described only by .debug_frame. */
	fib = sym_addr(p, "fib");
	ASSERT(fib);
	ASSERT_OK(extract_path(p, &only_debug, &d, &st));
	x = lupe_ehframe_find(&d, fib);
	ASSERT_EQ(st.sources, LUPE_EHFRAME_SRC_DEBUG_FRAME);
	if (!x || x->cfa_opcode != LUPE_CFA_SP || x->cfa_param != 8) {
		free(d.deltas);
		FAIL("fib is not covered by .debug_frame (cfa=rsp+8 at entry)");
	}
	free(d.deltas);
}

/* GCC's realigned stack: CFA = *(rbp - n), rbp saved by an expression. */
TEST(readelf_realigned_stack)
{
	char p[PATH_MAX];
	struct lupe_interval_data d;
	uint64_t f, end;
	size_t i, deref = 0;

	if (!build(p, "realign", "gcc", "realign.c", "-O2"))
		SKIP("gcc cannot build realign.c");
	CHECK_AGAINST_READELF(p, NULL, 0, NULL);
	f = sym_addr(p, "realigned");
	end = sym_addr(p, "main");
	ASSERT(f);
	ASSERT_OK(extract_path(p, NULL, &d, NULL));
	for (i = 0; i < d.count; i++) {
		const struct lupe_stack_delta *x = &d.deltas[i];

		if (x->address < f || (end > f && x->address >= end))
			continue;
		if (x->cfa_opcode == LUPE_CFA_DEREF_FP && x->cfa_param < 0 &&
		    x->fp_opcode == LUPE_FP_UNDEFINED)
			deref++;
	}
	free(d.deltas);
	if (!deref)
		FAIL("no cfa=*(rbp-n) rbp=undefined delta inside realigned()");
}

/* ---- hand-written CFI ---------------------------------------------------------------- */

struct want {
	const char *sym;
	unsigned off;
	const char *cfa, *fp;  /* as lupe_ehframe_format_* print them */
};

static const struct want cfi_wants[] = {
	{ "f_ops", 0, "rsp+8", "same" },
	{ "f_ops", 1, "rsp+16", "same" },
	{ "f_ops", 2, "rsp+16", "cfa-16" },
	{ "f_ops", 3, "rbp+16", "cfa-16" },
	{ "f_ops", 4, "rsp+16", "cfa-16" },
	{ "f_ops", 5, "rsp+32", "cfa-16" },
	{ "f_ops", 6, "rsp+32", "cfa-24" },
	{ "f_ops", 7, "rsp+48", "cfa-24" },
	{ "f_ops", 8, "rsp+48", "cfa-24" },
	{ "f_ops", 9, "rsp+48", "same" },
	{ "f_ops", 10, "rsp+48", "undefined" },
	{ "f_ops", 11, "rsp+48", "same" },
	{ "f_ops", 12, "rsp+48", "undefined" },
	{ "f_ops", 13, "rsp+48", "cfa+56" },
	{ "f_ops", 14, "rsp+48", "undefined" },
	{ "f_ops", 15, "rsp+48", "cfa-16" },
	{ "f_expr", 0, "rsp+8", "same" },
	{ "f_expr", 1, "*(rsp+32)", "same" },
	{ "f_expr", 2, "rbp+16", "same" },
	{ "f_expr", 3, "invalid", "" },
	{ "f_expr", 4, "plt", "" },
	{ "f_expr", 5, "invalid", "" },
	{ "f_expr", 6, "rsp+8", "same" },
	{ "f_expr", 7, "invalid", "" },
	{ "f_expr", 8, "*(rbp-16)", "undefined" },
	{ "f_expr", 9, "invalid", "" },
	{ "f_expr", 10, "invalid", "" },
	{ "f_expr", 11, "stop", "" },
	{ "f_signal", 0, "signal", "" },
	{ "f_signal", 1, "signal", "" },
	{ "f_signal", 2, "invalid", "" },
	{ "f_start", 0, "stop", "" },
	{ "f_start", 1, "stop", "" },
	{ "f_deep", 0, "invalid", "" },
	{ "f_deep", 1, "invalid", "" },
	{ "f_underflow", 0, "invalid", "" },
	{ "f_pers8", 0, "rsp+8", "same" },
	{ "f_pers8", 1, "rsp+16", "same" },
	{ "f_pers8", 2, "invalid", "" },
	{ "f_pers4", 1, "rsp+24", "same" },
	{ "f_pers2", 1, "rsp+32", "same" },
	{ "main", 0, "rsp+8", "same" },
};

TEST(hand_written_cfi)
{
	char p[PATH_MAX], cfa[32], fp[32];
	struct lupe_ehframe_stats st;
	struct lupe_interval_data d;
	uint64_t skip[2];
	size_t i, bad = 0;

	if (!build(p, "cfi", "gcc", "cfi.S", "-no-pie"))
		SKIP("gcc cannot assemble cfi.S");
	ASSERT_OK(extract_path(p, NULL, &d, &st));
	for (i = 0; i < sizeof(cfi_wants) / sizeof(cfi_wants[0]); i++) {
		const struct want *w = &cfi_wants[i];
		uint64_t a = sym_addr(p, w->sym);
		const struct lupe_stack_delta *x = a ? lupe_ehframe_find(&d, a + w->off) : NULL;

		if (!x) {
			printf("    %s+%u: no delta\n", w->sym, w->off);
			bad++;
			continue;
		}
		lupe_ehframe_format_cfa(x, cfa, sizeof(cfa));
		lupe_ehframe_format_fp(x, fp, sizeof(fp));
		if (strcmp(cfa, w->cfa) != 0 || strcmp(fp, w->fp) != 0) {
			printf("    %s+%u: want %s %s, got %s %s\n", w->sym, w->off, w->cfa, w->fp,
			       cfa, fp);
			bad++;
		}
	}
	free(d.deltas);
	if (bad)
		FAIL("%zu hand-computed rules differ", bad);
	/* f_deep and f_underflow are bad FDEs; the lit0 expression is unsupported; the
	 * r10 CFA, rsp+4, the RA in a register, rbp rules we cannot represent count as
	 * unsupported rules (once per FDE: f_ops and f_expr). */
	ASSERT_EQ(st.bad_fdes, 2);
	ASSERT_EQ(st.signal_fdes, 1);
	ASSERT_EQ(st.unsupported_exprs, 1);
	ASSERT_EQ(st.unsupported_rules, 2);
	ASSERT(st.stop_fdes >= 2);  /* f_expr, f_start, _start */
	ASSERT_EQ(st.plt_fdes, 1);
	/* And readelf agrees on everything but the FDEs we reject on purpose. */
	skip[0] = sym_addr(p, "f_deep");
	skip[1] = sym_addr(p, "f_underflow");
	CHECK_AGAINST_READELF(p, skip, 2, NULL);
}

/* ---- sources: the .eh_frame_hdr table, the linear walk, PT_GNU_EH_FRAME -------------- */

static int compare_hdr_linear(const char *p)
{
	LUPE_OPTS(lupe_ehframe_opts, linear, .no_eh_frame_hdr = true);
	struct lupe_ehframe_stats s1, s2;
	struct lupe_interval_data a, b;
	int rc;

	rc = extract_path(p, NULL, &a, &s1);
	if (rc)
		return rc;
	rc = extract_path(p, &linear, &b, &s2);
	if (rc == 0 && (!(s1.sources & LUPE_EHFRAME_SRC_HDR_TABLE) ||
			(s2.sources & LUPE_EHFRAME_SRC_HDR_TABLE) || !same_data(&a, &b)))
		rc = -EBADMSG;
	free(a.deltas);
	free(b.deltas);
	return rc;
}

TEST(hdr_table_and_linear_walk_agree)
{
	char p[PATH_MAX];
	const char *libs[] = { "libc.so.6", "libstdc++.so.6", "ld-linux-x86-64.so.2" };
	size_t i, n = 0;

	for (i = 0; i < sizeof(libs) / sizeof(libs[0]); i++) {
		if (!system_lib(p, libs[i]))
			continue;
		ASSERT_OK(compare_hdr_linear(p));
		n++;
	}
	if (build(p, "exceptions", "g++", "exceptions.cpp", "-O2")) {
		ASSERT_OK(compare_hdr_linear(p));
		n++;
	}
	if (!n)
		SKIP("no library to compare");
}

/* Without section headers, .eh_frame is found through PT_GNU_EH_FRAME. */
TEST(no_section_headers)
{
	LUPE_OPTS(lupe_ehframe_opts, eh_only, .no_debug_frame = true);
	char p[PATH_MAX], q[PATH_MAX];
	struct lupe_interval_data a, b;
	struct lupe_ehframe_stats st;
	Elf64_Ehdr *eh;
	uint8_t *img;
	size_t len;
	int rc;

	if (!build(p, "exceptions", "g++", "exceptions.cpp", "-O2"))
		SKIP("g++ cannot build exceptions.cpp");
	img = slurp(p, &len);
	ASSERT(img && len > sizeof(*eh));
	eh = (Elf64_Ehdr *)img;
	eh->e_shoff = 0;
	eh->e_shnum = 0;
	eh->e_shstrndx = 0;
	rc = spit(wpath(q, "exceptions-noshdr"), img, len);
	ASSERT_OK(rc);
	ASSERT_OK(extract_path(p, &eh_only, &a, NULL));
	rc = extract_path(q, NULL, &b, &st);
	if (rc == 0 && !same_data(&a, &b))
		rc = -EBADMSG;
	free(a.deltas);
	free(b.deltas);
	ASSERT_OK(rc);
	ASSERT(st.sources & LUPE_EHFRAME_SRC_PT_GNU_EH);
	ASSERT(st.sources & LUPE_EHFRAME_SRC_HDR_TABLE);
	/* The same image from memory, and with the table refused (linear walk up to the
	 * terminator within the segment). */
	{
		LUPE_OPTS(lupe_ehframe_opts, linear, .no_eh_frame_hdr = true);
		struct lupe_interval_data c, e;

		ASSERT_OK(lupe_ehframe_extract_mem(img, len, NULL, &c, NULL));
		rc = lupe_ehframe_extract_mem(img, len, &linear, &e, &st);
		if (rc == 0 && !same_data(&c, &e))
			rc = -EBADMSG;
		free(c.deltas);
		free(e.deltas);
		free(img);
		ASSERT_OK(rc);
		ASSERT(!(st.sources & LUPE_EHFRAME_SRC_HDR_TABLE));
	}
}

/* A corrupt .eh_frame_hdr table is noticed and the section walked instead. */
TEST(corrupt_hdr_table_falls_back)
{
	char p[PATH_MAX];
	struct lupe_interval_data a, b;
	struct lupe_ehframe_stats st;
	uint64_t vaddr;
	size_t len, hlen, i;
	uint8_t *img, *hdr;
	int rc;

	if (!build(p, "exceptions", "g++", "exceptions.cpp", "-O2"))
		SKIP("g++ cannot build exceptions.cpp");
	hdr = load_section(p, ".eh_frame_hdr", &vaddr, &hlen);
	img = slurp(p, &len);
	ASSERT(hdr && img && hlen > 20);
	ASSERT_OK(lupe_ehframe_extract_mem(img, len, NULL, &a, NULL));
	/* Find the table in the image and point its second FDE somewhere else. */
	for (i = 0; i + hlen <= len; i++)
		if (memcmp(img + i, hdr, hlen) == 0)
			break;
	ASSERT(i + hlen <= len);
	img[i + 12 + 8 + 4] ^= 0x10;
	rc = lupe_ehframe_extract_mem(img, len, NULL, &b, &st);
	if (rc == 0 && !same_data(&a, &b))
		rc = -EBADMSG;
	free(a.deltas);
	free(b.deltas);
	free(img);
	free(hdr);
	ASSERT_OK(rc);
	ASSERT_EQ(st.hdr_fallbacks, 1);
	ASSERT(!(st.sources & LUPE_EHFRAME_SRC_HDR_TABLE));
}

/* ---- errors -------------------------------------------------------------------------- */

TEST(errors)
{
	char p[PATH_MAX], q[PATH_MAX];
	struct lupe_interval_data d = { (void *)1, 1 };
	uint8_t *img;
	size_t len;
	int fd;

	ASSERT_EQ(extract_path(fixture(p, "plain.c"), NULL, &d, NULL), -ENOEXEC);
	ASSERT(d.deltas == NULL && d.count == 0);
	ASSERT_OK(spit(wpath(q, "empty"), "", 0));
	ASSERT_EQ(extract_path(q, NULL, &d, NULL), -ENOEXEC);
	fd = open(work_dir(), O_RDONLY | O_DIRECTORY);
	ASSERT(fd >= 0);
	ASSERT_EQ(lupe_ehframe_extract_fd(fd, NULL, &d, NULL), -ENOEXEC);
	close(fd);
	ASSERT_EQ(lupe_ehframe_extract_fd(-1, NULL, &d, NULL), -EINVAL);
	ASSERT_EQ(lupe_ehframe_extract_mem(NULL, 0, NULL, &d, NULL), -ENOEXEC);
	ASSERT_EQ(lupe_ehframe_extract_mem("\x7f" "ELF", 4, NULL, &d, NULL), -EINVAL);

	if (!build(p, "plain-gcc", "gcc", "plain.c", "-O2 -fomit-frame-pointer"))
		SKIP("gcc cannot build plain.c");
	/* Another machine: the rules are x86-64's. */
	img = slurp(p, &len);
	ASSERT(img);
	((Elf64_Ehdr *)img)->e_machine = EM_AARCH64;
	ASSERT_EQ(lupe_ehframe_extract_mem(img, len, NULL, &d, NULL), -ENOEXEC);
	free(img);
	/* No CFI at all: -ENOENT, also through the provider. */
	if (have("objcopy")) {
		struct lupe_stackdelta_provider *prov = lupe_ehframe_provider_new();
		struct lupe_exe_info info = { .fd = -1 };
		struct lupe_ehframe_stats st;
		int rc;

		ASSERT(prov);
		ASSERT_OK(lupe_test_run("objcopy -R .eh_frame -R .eh_frame_hdr -R .debug_frame '%s' '%s'", p,
			      wpath(q, "plain-nocfi")));
		ASSERT_EQ(extract_path(q, NULL, &d, NULL), -ENOENT);
		info.fd = open(q, O_RDONLY | O_CLOEXEC);
		rc = prov->ops->get_interval_data(prov, &info, &d);
		close(info.fd);
		info.fd = open(p, O_RDONLY | O_CLOEXEC);
		ASSERT_EQ(rc, -ENOENT);
		rc = prov->ops->get_interval_data(prov, &info, &d);
		close(info.fd);
		ASSERT_OK(rc);
		ASSERT(d.count > 0);
		free(d.deltas);
		lupe_ehframe_provider_stats(prov, &st);
		ASSERT(st.fdes > 0 && st.deltas > 0);
		prov->ops->free(prov);
	}
}

/* ---- hand-built sections ------------------------------------------------------------- */

struct bb {
	uint8_t b[1 << 16];
	size_t n;
};

static void put(struct bb *b, uint64_t v, int size)
{
	for (int i = 0; i < size; i++)
		b->b[b->n++] = (uint8_t)(v >> (8 * i));
}

static void uleb(struct bb *b, uint64_t v)
{
	do {
		uint8_t x = v & 0x7f;

		v >>= 7;
		b->b[b->n++] = x | (v ? 0x80 : 0);
	} while (v);
}

static void sleb(struct bb *b, int64_t v)
{
	bool more = true;

	while (more) {
		uint8_t x = v & 0x7f;

		v >>= 7;
		more = !((v == 0 && !(x & 0x40)) || (v == -1 && (x & 0x40)));
		b->b[b->n++] = x | (more ? 0x80 : 0);
	}
}

static void bytes(struct bb *b, const void *p, size_t n)
{
	memcpy(b->b + b->n, p, n);
	b->n += n;
}

/* Starts an entry: returns where its length goes. */
static size_t open_entry(struct bb *b, bool dwarf64)
{
	size_t at = b->n;

	if (dwarf64) {
		put(b, 0xffffffffu, 4);
		put(b, 0, 8);
	} else {
		put(b, 0, 4);
	}
	return at;
}

static void close_entry(struct bb *b, size_t at, bool dwarf64)
{
	size_t hdr = dwarf64 ? 12 : 4, len;

	while ((b->n - at) % 8)
		b->b[b->n++] = 0;  /* DW_CFA_nop */
	len = b->n - at - hdr;
	for (size_t i = 0; i < (dwarf64 ? 8u : 4u); i++)
		b->b[at + (dwarf64 ? 4 : 0) + i] = (uint8_t)(len >> (8 * i));
}

/* The standard initial instructions: CFA = rsp + 8, RA at CFA - 8. */
static void std_init(struct bb *b)
{
	static const uint8_t init[] = { 0x0c, 0x07, 0x08, 0x90, 0x01 };

	bytes(b, init, sizeof(init));
}

/* An encoded value at the current position (vaddr: the section's address). */
static void put_enc(struct bb *b, uint8_t enc, uint64_t v, uint64_t vaddr)
{
	if ((enc & 0x70) == 0x10)
		v -= vaddr + b->n;
	if ((enc & 0x70) == 0x50)
		while ((vaddr + b->n) % 8)
			b->b[b->n++] = 0;
	switch (enc & 0x0f) {
	case 0x00: put(b, v, 8); break;
	case 0x01: uleb(b, v); break;
	case 0x02: case 0x0a: put(b, v, 2); break;
	case 0x03: case 0x0b: put(b, v, 4); break;
	case 0x04: case 0x0c: put(b, v, 8); break;
	case 0x09: sleb(b, (int64_t)v); break;
	}
}

/* An .eh_frame with one "zPLR" CIE in the given FDE encoding and one FDE for
 * [0x1000, 0x1010): rsp+8 at 0x1000, rsp+16 from 0x1001 (advance_loc), rsp+24 from 0x1003
 * (set_loc), rsp+32 from 0x1005 (advance_loc2), rsp+40 from 0x1008 (advance_loc4),
 * rsp+48 from 0x100a (MIPS_advance_loc8), rbp at cfa-16 from 0x100c. */
static size_t make_eh(struct bb *b, uint8_t enc, uint8_t penc, uint64_t vaddr)
{
	size_t cie, fde, id;

	b->n = 0;
	cie = open_entry(b, false);
	put(b, 0, 4);          /* CIE id */
	put(b, 1, 1);          /* version */
	bytes(b, "zPLR", 5);
	uleb(b, 1);
	sleb(b, -8);
	put(b, 16, 1);
	{
		/* Augmentation data, after its length (one byte: it stays below 128). */
		size_t start = b->n++;

		b->b[b->n++] = penc;
		put_enc(b, penc, 0x4242, vaddr);
		b->b[b->n++] = 0x1b;   /* LSDA: pcrel sdata4 */
		b->b[b->n++] = enc;
		b->b[start] = (uint8_t)(b->n - start - 1);
	}
	std_init(b);
	close_entry(b, cie, false);

	fde = open_entry(b, false);
	id = b->n;
	put(b, id - cie, 4);
	put_enc(b, enc, 0x1000, vaddr);
	put_enc(b, enc & 0x0f, 0x10, vaddr);
	uleb(b, 4);            /* augmentation: the LSDA pointer */
	put(b, 0x1234, 4);
	b->b[b->n++] = 0x41;   /* advance_loc 1 */
	b->b[b->n++] = 0x0e;   /* def_cfa_offset 16 */
	b->b[b->n++] = 0x10;
	b->b[b->n++] = 0x01;   /* set_loc 0x1003 */
	put_enc(b, enc, 0x1003, vaddr);
	b->b[b->n++] = 0x0e;
	b->b[b->n++] = 24;
	b->b[b->n++] = 0x03;   /* advance_loc2 2 */
	put(b, 2, 2);
	b->b[b->n++] = 0x0e;
	b->b[b->n++] = 32;
	b->b[b->n++] = 0x04;   /* advance_loc4 3 */
	put(b, 3, 4);
	b->b[b->n++] = 0x0e;
	b->b[b->n++] = 40;
	b->b[b->n++] = 0x1d;   /* MIPS_advance_loc8 2 */
	put(b, 2, 8);
	b->b[b->n++] = 0x0e;
	b->b[b->n++] = 48;
	b->b[b->n++] = 0x42;   /* advance_loc 2 */
	b->b[b->n++] = 0x86;   /* offset rbp, 2 * -8 */
	b->b[b->n++] = 0x02;
	close_entry(b, fde, false);
	put(b, 0, 4);          /* terminator */
	return b->n;
}

static const char *check_rows(const struct lupe_interval_data *d, const char *const *want)
{
	static char msg[128];
	char cfa[32], fp[32], got[80];
	size_t i;

	for (i = 0; want[i]; i++) {
		if (i >= d->count)
			return "too few deltas";
		snprintf(got, sizeof(got), "%#llx %s %s", (unsigned long long)d->deltas[i].address,
			 lupe_ehframe_format_cfa(&d->deltas[i], cfa, sizeof(cfa)),
			 lupe_ehframe_format_fp(&d->deltas[i], fp, sizeof(fp)));
		if (strcmp(got, want[i]) != 0) {
			snprintf(msg, sizeof(msg), "row %zu: '%s', want '%s'", i, got, want[i]);
			return msg;
		}
	}
	return i == d->count ? NULL : "too many deltas";
}

static const char *const eh_rows[] = {
	"0x1000 rsp+8 same", "0x1001 rsp+16 same", "0x1003 rsp+24 same", "0x1005 rsp+32 same",
	"0x1008 rsp+40 same", "0x100a rsp+48 same", "0x100c rsp+48 cfa-16", "0x1010 invalid ",
	NULL,
};

TEST(pointer_encodings)
{
	static const uint8_t encs[] = { 0x00, 0x01, 0x02, 0x03, 0x04, 0x09, 0x0a, 0x0b, 0x0c,
					0x10, 0x1b, 0x1c, 0x1a, 0x50 };
	static const uint8_t pencs[] = { 0x9b, 0x00, 0x03, 0x0c, 0x01, 0x1b, 0x50, 0x80 | 0x04 };
	static struct bb b;
	struct lupe_interval_data d;
	struct lupe_ehframe_stats st;
	size_t i, len;
	const char *why;

	for (i = 0; i < sizeof(encs); i++) {
		uint64_t vaddr = 0x800 + 8 * i;

		len = make_eh(&b, encs[i], pencs[i % sizeof(pencs)], vaddr);
		ASSERT_OK(lupe_ehframe_extract_section(b.b, len, vaddr, false, &d, &st));
		why = check_rows(&d, eh_rows);
		free(d.deltas);
		if (why)
			FAIL("FDE encoding %#x: %s", encs[i], why);
		ASSERT_EQ(st.fdes, 1);
		ASSERT_EQ(st.cies, 1);
	}
	/* datarel needs .eh_frame_hdr's address, which a bare section does not have;
	 * textrel is never used: both make a bad FDE. */
	len = make_eh(&b, 0x3b, 0x9b, 0x800);
	ASSERT_EQ(lupe_ehframe_extract_section(b.b, len, 0x800, false, &d, &st), -EINVAL);
	ASSERT_EQ(st.bad_fdes, 1);
	len = make_eh(&b, 0x2b, 0x9b, 0x800);
	ASSERT_EQ(lupe_ehframe_extract_section(b.b, len, 0x800, false, &d, &st), -EINVAL);
}

/* .debug_frame: 32- and 64-bit DWARF, CIE versions 1, 3 and 4 (with an address size). */
static size_t make_debug(struct bb *b, bool dwarf64, int version, int addr_size)
{
	size_t cie, fde;

	b->n = 0;
	cie = open_entry(b, dwarf64);
	put(b, dwarf64 ? ~0ULL : 0xffffffffu, dwarf64 ? 8 : 4);
	put(b, version, 1);
	put(b, 0, 1);          /* augmentation "" */
	if (version == 4) {
		put(b, addr_size, 1);
		put(b, 0, 1);
	}
	uleb(b, 4);            /* code alignment 4: advances count in 4s */
	sleb(b, -8);
	if (version == 1)
		put(b, 16, 1);
	else
		uleb(b, 16);
	std_init(b);
	close_entry(b, cie, dwarf64);
	fde = open_entry(b, dwarf64);
	put(b, cie, dwarf64 ? 8 : 4);
	put(b, 0x400000, addr_size);
	put(b, 0x20, addr_size);
	b->b[b->n++] = 0x41;   /* advance_loc 1 (4 bytes) */
	b->b[b->n++] = 0x0e;
	b->b[b->n++] = 0x10;
	b->b[b->n++] = 0x42;   /* advance_loc 2 (8 bytes) */
	b->b[b->n++] = 0x0c;   /* def_cfa rbp, 16 */
	b->b[b->n++] = 0x06;
	b->b[b->n++] = 0x10;
	b->b[b->n++] = 0x86;
	b->b[b->n++] = 0x02;
	close_entry(b, fde, dwarf64);
	return b->n;
}

TEST(debug_frame_formats)
{
	static const char *const rows[] = { "0x400000 rsp+8 same", "0x400004 rsp+16 same",
					    "0x40000c rbp+16 cfa-16", "0x400020 invalid ", NULL };
	static struct bb b;
	struct { bool d64; int ver, asz; } v[] = {
		{ false, 1, 8 }, { false, 3, 8 }, { false, 4, 8 }, { false, 4, 4 },
		{ true, 1, 8 }, { true, 4, 8 },
	};
	struct lupe_interval_data d;
	struct lupe_ehframe_stats st;
	const char *why;
	size_t i, len;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		len = make_debug(&b, v[i].d64, v[i].ver, v[i].asz);
		ASSERT_OK(lupe_ehframe_extract_section(b.b, len, 0, true, &d, &st));
		why = check_rows(&d, rows);
		free(d.deltas);
		if (why)
			FAIL("dwarf64=%d version %d address size %d: %s", v[i].d64, v[i].ver,
			     v[i].asz, why);
		/* Read as .eh_frame, the CIE ID is an FDE's CIE pointer: nothing usable. */
		ASSERT(lupe_ehframe_extract_section(b.b, len, 0, false, &d, &st) != 0);
	}
}

/* Crafted breakage: every entry is rejected and counted, the good ones still come out. */
TEST(crafted_bad_entries)
{
	static struct bb b;
	struct lupe_interval_data d;
	struct lupe_ehframe_stats st;
	size_t cie, fde, id, good_len;
	int i;

	/* A good CIE and FDE, then FDEs whose CIE pointer goes: past the start of the
	 * section (huge), to themselves, to the good FDE (not a CIE), into the middle of
	 * the CIE; then a CIE of unknown version, one with an unknown augmentation and no
	 * 'z', one with a code alignment of 0, and FDEs using them. */
	good_len = make_eh(&b, 0x1b, 0x9b, 0);
	b.n = good_len - 4;    /* drop the terminator */
	fde = 4 + (b.b[0] | b.b[1] << 8);  /* the good FDE follows the CIE */
	for (i = 0; i < 4; i++) {
		uint32_t ptrs[4];

		size_t at = open_entry(&b, false);

		id = b.n;
		ptrs[0] = 0xfffffff0u;
		ptrs[1] = (uint32_t)(id - at);   /* the entry itself */
		ptrs[2] = (uint32_t)(id - fde);  /* the good FDE: not a CIE */
		ptrs[3] = (uint32_t)(id - 5);    /* inside the CIE: its ID and version
						  * read as a length run past the end */
		put(&b, ptrs[i], 4);
		put(&b, 0x2000, 4);
		put(&b, 0x10, 4);
		close_entry(&b, at, false);
	}
	for (i = 0; i < 3; i++) {
		cie = open_entry(&b, false);
		put(&b, 0, 4);
		put(&b, i == 0 ? 2 : 1, 1);
		bytes(&b, i == 1 ? "xy" : "zR", 3);
		uleb(&b, i == 2 ? 0 : 1);
		sleb(&b, -8);
		put(&b, 16, 1);
		if (i != 1) {
			uleb(&b, 1);
			b.b[b.n++] = 0x1b;
		}
		std_init(&b);
		close_entry(&b, cie, false);
		fde = open_entry(&b, false);
		id = b.n;
		put(&b, id - cie, 4);
		put_enc(&b, 0x1b, 0x3000 + 0x100 * i, 0);
		put(&b, 0x10, 4);
		uleb(&b, 0);
		close_entry(&b, fde, false);
	}
	put(&b, 0, 4);
	ASSERT_OK(lupe_ehframe_extract_section(b.b, b.n, 0, false, &d, &st));
	ASSERT(sanity(&d) == NULL);
	ASSERT_EQ(d.count, 8);  /* the good FDE alone */
	free(d.deltas);
	ASSERT_EQ(st.fdes, 1);
	ASSERT_EQ(st.bad_fdes, 7);
	ASSERT_EQ(st.bad_cies, 3);

	/* A length running past the end: counted, the walk stops there. */
	good_len = make_eh(&b, 0x1b, 0x9b, 0);
	b.n = good_len - 4;
	put(&b, 0x7ffffff0, 4);
	put(&b, 0, 4);
	ASSERT_OK(lupe_ehframe_extract_section(b.b, b.n, 0, false, &d, &st));
	free(d.deltas);
	ASSERT_EQ(st.bad_fdes, 1);
	/* Reserved lengths (0xfffffff0..0xfffffffe) and a 64-bit length past the end. */
	b.n = good_len - 4;
	put(&b, 0xfffffff5u, 4);
	ASSERT_OK(lupe_ehframe_extract_section(b.b, b.n, 0, false, &d, &st));
	free(d.deltas);
	ASSERT_EQ(st.bad_fdes, 1);
	b.n = good_len - 4;
	put(&b, 0xffffffffu, 4);
	put(&b, ~0ULL, 8);
	ASSERT_OK(lupe_ehframe_extract_section(b.b, b.n, 0, false, &d, &st));
	free(d.deltas);
	ASSERT_EQ(st.bad_fdes, 1);
}

/* 100,000 remember_states in one FDE: rejected at the bound, without recursion. And a
 * program that advances past the FDE stops being read there. */
TEST(remember_state_overflow)
{
	static struct bb b;
	struct lupe_interval_data d;
	struct lupe_ehframe_stats st;
	size_t cie, fde, id, i;
	uint8_t *big;

	b.n = 0;
	cie = open_entry(&b, false);
	put(&b, 0, 4);
	put(&b, 1, 1);
	bytes(&b, "zR", 3);
	uleb(&b, 1);
	sleb(&b, -8);
	put(&b, 16, 1);
	uleb(&b, 1);
	b.b[b.n++] = 0x1b;
	std_init(&b);
	close_entry(&b, cie, false);
	big = malloc(1 << 20);
	ASSERT(big);
	memcpy(big, b.b, b.n);
	fde = b.n;
	b.n = 0;
	/* Built straight into the big buffer: length, pointer, range, then the ops. */
	id = fde + 4;
	{
		size_t n = fde;
		uint32_t v;
		size_t ops = 100000;

		v = (uint32_t)(4 + 4 + 4 + 1 + ops);
		memcpy(big + n, &v, 4);
		n += 4;
		v = (uint32_t)(id - cie);
		memcpy(big + n, &v, 4);
		n += 4;
		v = (uint32_t)(0x5000 - n);   /* pcrel to vaddr 0 */
		memcpy(big + n, &v, 4);
		n += 4;
		v = 0x40;
		memcpy(big + n, &v, 4);
		n += 4;
		big[n++] = 0;   /* no augmentation data */
		for (i = 0; i < ops; i++)
			big[n++] = 0x0a;
		memset(big + n, 0, 4);
		n += 4;
		ASSERT_EQ(lupe_ehframe_extract_section(big, n, 0, false, &d, &st), -EINVAL);
		ASSERT_EQ(st.bad_fdes, 1);
		ASSERT_EQ(st.fdes, 1);
	}
	free(big);
}

/* Offsets that overflow when scaled by the data alignment, or do not fit 32 bits: an
 * unsupported rule, never undefined behaviour (the UBSan build checks). Found by the
 * fuzzer (fixtures/ehframe/seeds/regress-offset-overflow). */
TEST(huge_operands)
{
	static const char *const rows[] = { "0x1000 rsp+8 undefined", "0x1001 invalid ",
					    "0x1005 rsp+8 undefined", "0x1010 invalid ", NULL };
	static struct bb b;
	struct lupe_interval_data d;
	struct lupe_ehframe_stats st;
	size_t cie, fde;
	const char *why;

	b.n = 0;
	cie = open_entry(&b, false);
	put(&b, 0, 4);
	put(&b, 1, 1);
	bytes(&b, "zR", 3);
	uleb(&b, 1);
	sleb(&b, -8);
	put(&b, 16, 1);
	uleb(&b, 1);
	b.b[b.n++] = 0x1b;
	std_init(&b);
	close_entry(&b, cie, false);
	fde = open_entry(&b, false);
	put(&b, b.n - cie, 4);
	put_enc(&b, 0x1b, 0x1000, 0);
	put(&b, 0x10, 4);
	uleb(&b, 0);
	b.b[b.n++] = 0x86;                 /* offset rbp, 2^62 * -8 */
	uleb(&b, 1ULL << 62);
	b.b[b.n++] = 0x41;
	b.b[b.n++] = 0x12;                 /* def_cfa_sf rsp, INT64_MIN * -8 */
	b.b[b.n++] = 0x07;
	sleb(&b, INT64_MIN);
	b.b[b.n++] = 0x41;
	b.b[b.n++] = 0x2f;                 /* GNU_negative_offset_extended rbp, 2^64 - 1 */
	b.b[b.n++] = 0x06;
	uleb(&b, ~0ULL);
	b.b[b.n++] = 0x41;
	b.b[b.n++] = 0x0c;                 /* def_cfa rsp, 2^64 - 1 */
	b.b[b.n++] = 0x07;
	uleb(&b, ~0ULL);
	b.b[b.n++] = 0x41;
	b.b[b.n++] = 0x13;                 /* def_cfa_offset_sf -2^62: -2^62 * -8 overflows */
	sleb(&b, -(1LL << 62));
	b.b[b.n++] = 0x41;
	b.b[b.n++] = 0x0c;                 /* def_cfa rsp, 8 */
	b.b[b.n++] = 0x07;
	b.b[b.n++] = 0x08;
	close_entry(&b, fde, false);
	put(&b, 0, 4);
	ASSERT_OK(lupe_ehframe_extract_section(b.b, b.n, 0, false, &d, &st));
	why = check_rows(&d, rows);
	free(d.deltas);
	if (why)
		FAIL("%s", why);
	ASSERT_EQ(st.unsupported_rules, 1);
}

/* ---- bad input: truncations and mutations -------------------------------------------- */

/* Runs one extraction on an exact-size copy (so ASan sees any read past the end) and
 * checks the result is an error or a sane table. */
static const char *try_section(const uint8_t *src, size_t len, uint64_t vaddr, bool dbg)
{
	struct lupe_interval_data d;
	struct lupe_ehframe_stats st;
	uint8_t *copy = malloc(len ? len : 1);
	const char *why = NULL;
	int rc;

	if (!copy)
		return "out of memory";
	memcpy(copy, src, len);
	rc = lupe_ehframe_extract_section(len ? copy : NULL, len, vaddr, dbg, &d, &st);
	if (rc == 0)
		why = sanity(&d);
	else if (rc != -ENOENT && rc != -EINVAL)
		why = "unexpected error code";
	else if (d.deltas || d.count)
		why = "error with a result";
	free(d.deltas);
	free(copy);
	return why;
}

static const char *try_image(const uint8_t *src, size_t len, const struct lupe_ehframe_opts *o)
{
	struct lupe_interval_data d;
	uint8_t *copy = malloc(len ? len : 1);
	const char *why = NULL;
	int rc;

	if (!copy)
		return "out of memory";
	memcpy(copy, src, len);
	rc = lupe_ehframe_extract_mem(copy, len, o, &d, NULL);
	if (rc == 0)
		why = sanity(&d);
	else if (rc != -ENOENT && rc != -EINVAL && rc != -ENOEXEC)
		why = "unexpected error code";
	free(d.deltas);
	free(copy);
	return why;
}

TEST(every_truncation_of_a_real_eh_frame)
{
	char p[PATH_MAX];
	uint64_t vaddr;
	size_t len, i, ok = 0;
	uint8_t *sec;
	const char *why;

	if (!build(p, "exceptions", "g++", "exceptions.cpp", "-O2"))
		SKIP("g++ cannot build exceptions.cpp");
	sec = load_section(p, ".eh_frame", &vaddr, &len);
	ASSERT(sec && len > 64);
	for (i = 0; i <= len; i++) {
		why = try_section(sec, i, vaddr, false);
		if (why) {
			free(sec);
			FAIL("truncated to %zu bytes: %s", i, why);
		}
	}
	/* The whole section gives the same table as the file (no segment check here, and
	 * the file's crt FDEs are all inside its text). */
	{
		struct lupe_interval_data a, b;
		LUPE_OPTS(lupe_ehframe_opts, linear, .no_eh_frame_hdr = true);
		int rc;

		ASSERT_OK(lupe_ehframe_extract_section(sec, len, vaddr, false, &a, NULL));
		rc = extract_path(p, &linear, &b, NULL);
		if (rc == 0 && !same_data(&a, &b))
			rc = -EBADMSG;
		free(a.deltas);
		free(b.deltas);
		ASSERT_OK(rc);
		ok++;
	}
	free(sec);
	ASSERT(ok);
}

TEST(truncations_of_libc_eh_frame)
{
	char p[PATH_MAX];
	uint64_t vaddr;
	size_t len, i, step;
	uint8_t *sec;
	const char *why;

	if (!system_lib(p, "libc.so.6"))
		SKIP("no libc.so.6");
	sec = load_section(p, ".eh_frame", &vaddr, &len);
	ASSERT(sec && len > 4096);
	/* 997 evenly spread lengths plus every length around the first entries. */
	step = len / 997 + 1;
	for (i = 0; i <= len; i += (i < 512 ? 1 : step)) {
		why = try_section(sec, i, vaddr, false);
		if (why) {
			free(sec);
			FAIL("truncated to %zu bytes: %s", i, why);
		}
	}
	free(sec);
}

/* Whole ELF files cut short, every 16 bytes (every byte near the end, where the section
 * headers live). */
TEST(truncations_of_an_elf_file)
{
	char p[PATH_MAX];
	uint8_t *img;
	size_t len, i;
	const char *why;

	if (!build(p, "cfi", "gcc", "cfi.S", "-no-pie"))
		SKIP("gcc cannot assemble cfi.S");
	img = slurp(p, &len);
	ASSERT(img);
	for (i = 0; i <= len; i += (i + 2048 >= len ? 1 : 16)) {
		why = try_image(img, i, NULL);
		if (why) {
			free(img);
			FAIL("truncated to %zu bytes: %s", i, why);
		}
	}
	free(img);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng(void)
{
	/* xorshift64*: a fixed seed, so failures reproduce. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static void mutate(uint8_t *buf, size_t len)
{
	static const uint8_t special[] = { 0x00, 0xff, 0x80, 0x7f, 0x0a, 0x0b, 0x0f, 0x40, 0xc0 };
	int n = 1 + (int)(rng() % 8), i;

	for (i = 0; i < n; i++) {
		size_t at = rng() % len;

		switch (rng() % 4) {
		case 0: buf[at] = (uint8_t)rng(); break;
		case 1: buf[at] ^= (uint8_t)(1u << (rng() % 8)); break;
		case 2: buf[at] = special[rng() % sizeof(special)]; break;
		default: buf[at] += (uint8_t)(rng() % 5) - 2; break;
		}
	}
}

TEST(seeded_mutations)
{
	char p[PATH_MAX];
	uint64_t vaddr;
	size_t len, ilen, i, ok = 0;
	uint8_t *sec, *buf, *img, *ibuf;
	const char *why = NULL;

	if (!build(p, "exceptions", "g++", "exceptions.cpp", "-O2"))
		SKIP("g++ cannot build exceptions.cpp");
	sec = load_section(p, ".eh_frame", &vaddr, &len);
	img = slurp(p, &ilen);
	buf = malloc(len);
	ibuf = malloc(ilen);
	ASSERT(sec && img && buf && ibuf);
	rng_state = 0x9e3779b97f4a7c15ULL;
	for (i = 0; i < 10000 && !why; i++) {
		memcpy(buf, sec, len);
		mutate(buf, len);
		why = try_section(buf, len, vaddr, i % 5 == 4);
		if (!why)
			ok++;
	}
	/* The whole file, mutated around its CFI: .eh_frame, .eh_frame_hdr and the headers. */
	for (i = 0; i < 2000 && !why; i++) {
		LUPE_OPTS(lupe_ehframe_opts, linear, .no_eh_frame_hdr = (i % 3 == 0));

		memcpy(ibuf, img, ilen);
		if (i % 4 == 0)
			mutate(ibuf, 256);  /* ELF and program headers */
		else
			mutate(ibuf, ilen);
		why = try_image(ibuf, ilen, &linear);
	}
	free(sec);
	free(buf);
	free(img);
	free(ibuf);
	if (why)
		FAIL("mutation %zu: %s", i - 1, why);
	ASSERT_EQ(ok, 10000);
}

/* ---- small API pieces ---------------------------------------------------------------- */

TEST(find_and_format)
{
	struct lupe_stack_delta v[] = {
		{ .address = 0x10, .cfa_opcode = LUPE_CFA_SP, .cfa_param = 8 },
		{ .address = 0x20, .cfa_opcode = LUPE_CFA_FP, .cfa_param = 16,
		  .fp_opcode = LUPE_FP_AT_CFA, .fp_param = -16 },
		{ .address = 0x30, .cfa_opcode = LUPE_CFA_DEREF_FP, .cfa_param = -8,
		  .fp_opcode = LUPE_FP_UNDEFINED },
		{ .address = 0x40, .cfa_opcode = LUPE_CFA_CMD, .cfa_param = LUPE_CMD_STOP },
	};
	struct lupe_interval_data d = { v, 4 };
	char a[32], b[32];
	const char *cmd;

	ASSERT(lupe_ehframe_find(&d, 0xf) == NULL);
	ASSERT(lupe_ehframe_find(&d, 0x10) == &v[0]);
	ASSERT(lupe_ehframe_find(&d, 0x1f) == &v[0]);
	ASSERT(lupe_ehframe_find(&d, 0x20) == &v[1]);
	ASSERT(lupe_ehframe_find(&d, 0x3f) == &v[2]);
	ASSERT(lupe_ehframe_find(&d, ~0ULL) == &v[3]);
	ASSERT_STREQ(lupe_ehframe_format_cfa(&v[0], a, sizeof(a)), "rsp+8");
	ASSERT_STREQ(lupe_ehframe_format_fp(&v[0], b, sizeof(b)), "same");
	ASSERT_STREQ(lupe_ehframe_format_cfa(&v[1], a, sizeof(a)), "rbp+16");
	ASSERT_STREQ(lupe_ehframe_format_fp(&v[1], b, sizeof(b)), "cfa-16");
	ASSERT_STREQ(lupe_ehframe_format_cfa(&v[2], a, sizeof(a)), "*(rbp-8)");
	ASSERT_STREQ(lupe_ehframe_format_fp(&v[2], b, sizeof(b)), "undefined");
	ASSERT(lupe_ehframe_is_cmd(&v[3], &cmd));
	ASSERT_STREQ(cmd, "stop");
	ASSERT_STREQ(lupe_ehframe_format_fp(&v[3], b, sizeof(b)), "");
	ASSERT(!lupe_ehframe_is_cmd(&v[0], &cmd));
	d.count = 0;
	ASSERT(lupe_ehframe_find(&d, 0x10) == NULL);
}
