/* elfinfo against independent oracles: ELF files built here with cc/objcopy and read back
 * with readelf, nm, gzip (CRC-32) and the running process's own mappings; hand-built ELF
 * images (checked with readelf too) for byte order, class and malformed inputs; and every
 * truncation and random corruption of a real file, which must fail cleanly. */
#include "elfinfo.h"
#include "lupe_test.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SEGS 32

struct oracle_seg {
	uint64_t vaddr, offset, filesz, memsz;
};

static char tmp_dir[64];

static void remove_tmp_dir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
	if (system(cmd) != 0)
		fprintf(stdout, "    could not remove %s\n", tmp_dir);
}

static const char *tmpdir(void)
{
	if (!tmp_dir[0]) {
		snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/lupe-elfinfo-XXXXXX");
		if (!mkdtemp(tmp_dir)) {
			tmp_dir[0] = '\0';
			return NULL;
		}
		atexit(remove_tmp_dir);
	}
	return tmp_dir;
}

/* Runs a shell command (output discarded unless redirected); true when it exits 0. */
static bool sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static bool sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	return system(cmd) == 0;
}

/* Runs a command and returns its whole stdout (malloc'd, NUL-terminated) or NULL. */
static char *capture(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *capture(const char *fmt, ...)
{
	char cmd[2048], *out = NULL, *tmp;
	size_t len = 0, cap = 0, n;
	va_list ap;
	FILE *f;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	f = popen(cmd, "r");
	if (!f)
		return NULL;
	do {
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 8192;
			tmp = realloc(out, cap);
			if (!tmp) {
				free(out);
				pclose(f);
				return NULL;
			}
			out = tmp;
		}
		n = fread(out + len, 1, cap - len - 1, f);
		len += n;
	} while (n > 0);
	out[len] = '\0';
	if (pclose(f) != 0) {
		free(out);
		return NULL;
	}
	return out;
}

static bool have_toolchain(void)
{
	return sh("cc --version >/dev/null 2>&1 && readelf --version >/dev/null 2>&1 && "
		  "objcopy --version >/dev/null 2>&1");
}

/* Builds tests/fixtures/elf/hello.c into <tmp>/<name> with extra flags. */
static bool build(char *path, size_t pathlen, const char *name, const char *flags)
{
	const char *fixtures = getenv("LUPE_FIXTURES"), *dir = tmpdir();

	if (!fixtures || !dir)
		return false;
	snprintf(path, pathlen, "%s/%s", dir, name);
	return sh("cc -O1 %s -o '%s' '%s/elf/hello.c' >/dev/null 2>&1", flags, path, fixtures);
}

/* Executable PT_LOADs as `readelf -lW` prints them. */
static int readelf_xsegs(const char *path, struct oracle_seg *segs, int max)
{
	char *text = capture("readelf -lW '%s' 2>/dev/null", path), *line, *save = NULL;
	unsigned long long off, va, fs, ms;
	int n = 0, used;

	if (!text)
		return -1;
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *align;

		if (sscanf(line, " LOAD %llx %llx %*x %llx %llx %n", &off, &va, &fs, &ms, &used) != 4)
			continue;
		/* The flags ("R E", "RW ") sit between memsz and the final 0x alignment. */
		align = strrchr(line, 'x');
		if (!align || !memchr(line + used, 'E', (size_t)(align - (line + used))))
			continue;
		if (n < max)
			segs[n] = (struct oracle_seg){ va, off, fs, ms };
		n++;
	}
	free(text);
	return n;
}

/* The "Build ID:" hex of `readelf -n`, "" when it prints none. */
static bool readelf_build_id(const char *path, char hex[130])
{
	char *text = capture("readelf -n '%s' 2>/dev/null", path), *p;

	hex[0] = '\0';
	if (!text)
		return false;
	p = strstr(text, "Build ID: ");
	if (p)
		sscanf(p + strlen("Build ID: "), "%127[0-9a-f]", hex);
	free(text);
	return true;
}

/* The string at offset 0 of .gnu_debuglink, per `readelf --string-dump`. */
static bool readelf_debuglink(const char *path, char name[256])
{
	char *text = capture("readelf --string-dump=.gnu_debuglink '%s' 2>/dev/null", path), *p;

	name[0] = '\0';
	if (!text)
		return false;
	p = strstr(text, "[     0]  ");
	if (p)
		sscanf(p + strlen("[     0]  "), "%255s", name);
	free(text);
	return name[0] != '\0';
}

/* ELF type as `readelf -h` names it: "EXEC" or "DYN". */
static bool readelf_type(const char *path, char type[16])
{
	char *text = capture("readelf -h '%s' 2>/dev/null", path), *p;

	type[0] = '\0';
	if (!text)
		return false;
	p = strstr(text, "Type:");
	if (p)
		sscanf(p + strlen("Type:"), " %15s", type);
	free(text);
	return type[0] != '\0';
}

static void *read_file(const char *path, size_t *len)
{
	struct stat st;
	void *buf = NULL;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) == 0) {
		buf = malloc(st.st_size ? (size_t)st.st_size : 1);
		if (buf && read(fd, buf, (size_t)st.st_size) != (ssize_t)st.st_size) {
			free(buf);
			buf = NULL;
		}
		*len = (size_t)st.st_size;
	}
	close(fd);
	return buf;
}

static bool write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	bool ok;

	if (fd < 0)
		return false;
	ok = write(fd, buf, len) == (ssize_t)len;
	close(fd);
	return ok;
}

/* Parses path through both entry points; they must agree byte for byte. */
static int parse_both(const char *path, struct lupe_elfinfo *e)
{
	struct lupe_elfinfo m;
	size_t len = 0;
	void *buf;
	int fd, err, err_mem;

	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	if (lseek(fd, 123, SEEK_SET) != 123) {
		close(fd);
		return -EIO;
	}
	err = lupe_elfinfo_from_fd(fd, e);
	/* The descriptor's offset is left alone. */
	if (lseek(fd, 0, SEEK_CUR) != 123)
		err = -ESPIPE;
	close(fd);
	buf = read_file(path, &len);
	if (!buf)
		return -EIO;
	err_mem = lupe_elfinfo_from_mem(buf, len, &m);
	free(buf);
	if (err_mem != err || memcmp(&m, e, sizeof(m)) != 0)
		return -EBADMSG;
	return err;
}

/* Compares every field elfinfo reports with readelf's view of path. */
static const char *check_against_readelf(const char *path, struct lupe_elfinfo *e)
{
	static char why[512];
	struct oracle_seg segs[MAX_SEGS];
	char hex[2 * LUPE_BUILD_ID_MAX + 1], want_hex[130], type[16];
	unsigned char ehdr[20];
	int n, i, err, fd;

	err = parse_both(path, e);
	if (err) {
		snprintf(why, sizeof(why), "parse '%s': %d", path, err);
		return why;
	}
	n = readelf_xsegs(path, segs, MAX_SEGS);
	if (n <= 0 || n > MAX_SEGS)
		return "readelf found no executable LOAD";
	if ((size_t)n != e->nxsegs + e->xsegs_dropped || e->nxsegs != (size_t)(n < 8 ? n : 8)) {
		snprintf(why, sizeof(why), "%zu+%zu segments, readelf has %d", e->nxsegs,
			 e->xsegs_dropped, n);
		return why;
	}
	for (i = 0; i < n && i < LUPE_ELF_MAX_XSEGS; i++) {
		if (e->xsegs[i].vaddr != segs[i].vaddr || e->xsegs[i].offset != segs[i].offset ||
		    e->xsegs[i].filesz != segs[i].filesz || e->xsegs[i].memsz != segs[i].memsz) {
			snprintf(why, sizeof(why), "segment %d differs from readelf", i);
			return why;
		}
	}
	if (!readelf_build_id(path, want_hex))
		return "readelf -n failed";
	lupe_elfinfo_build_id_hex(e, hex, sizeof(hex));
	if (strcmp(hex, want_hex) != 0 || e->build_id_len * 2 != strlen(want_hex)) {
		snprintf(why, sizeof(why), "build id '%s', readelf '%s'", hex, want_hex);
		return why;
	}
	if (!readelf_type(path, type))
		return "readelf -h failed";
	if (e->type != (strcmp(type, "DYN") == 0 ? ET_DYN : strcmp(type, "EXEC") == 0 ? ET_EXEC : 0))
		return "type differs from readelf -h";
	/* e_machine: little-endian 16 bits at byte 18 of every ELF header (x86, arm64 hosts). */
	fd = open(path, O_RDONLY);
	if (fd < 0 || pread(fd, ehdr, sizeof(ehdr), 0) != (ssize_t)sizeof(ehdr)) {
		if (fd >= 0)
			close(fd);
		return "cannot read the header";
	}
	close(fd);
	if (ehdr[EI_DATA] == ELFDATA2LSB && e->machine != (ehdr[18] | ehdr[19] << 8))
		return "machine differs from the header";
	return NULL;
}

#define ASSERT_READELF(path, e)                                             \
	do {                                                                \
		const char *_why = check_against_readelf(path, e);          \
		if (_why)                                                   \
			FAIL("%s: %s", path, _why);                         \
	} while (0)

/* ---- files built by the toolchain --------------------------------------------- */

TEST(pie_with_sha1_build_id)
{
	struct lupe_elfinfo e;
	char path[256];

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "pie", "-fPIE -pie -Wl,--build-id=sha1"));
	ASSERT_READELF(path, &e);
	ASSERT_EQ(e.type, ET_DYN);
	ASSERT_EQ(e.build_id_len, 20);
	ASSERT_STREQ(e.debuglink, "");
}

TEST(non_pie_executable)
{
	struct lupe_elfinfo e;
	char path[256];

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "nopie", "-fno-pie -no-pie"));
	ASSERT_READELF(path, &e);
	ASSERT_EQ(e.type, ET_EXEC);
}

TEST(shared_library)
{
	struct lupe_elfinfo e;
	char path[256];

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "libhello.so", "-shared -fPIC -DLUPE_FIXTURE_LIB"));
	ASSERT_READELF(path, &e);
	ASSERT_EQ(e.type, ET_DYN);
}

TEST(build_id_given_by_hand)
{
	struct lupe_elfinfo e;
	char path[256], hex[2 * LUPE_BUILD_ID_MAX + 1];

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "handid", "-Wl,--build-id=0x00c0ffee0123456789abcdef"));
	ASSERT_READELF(path, &e);
	ASSERT_STREQ(lupe_elfinfo_build_id_hex(&e, hex, sizeof(hex)), "00c0ffee0123456789abcdef");
	ASSERT_EQ(e.build_id_len, 12);
	ASSERT_EQ(e.build_id[0], 0x00);
	ASSERT_EQ(e.build_id[11], 0xef);
	/* A short buffer gets the whole bytes that fit. */
	ASSERT_STREQ(lupe_elfinfo_build_id_hex(&e, hex, 6), "00c0");
	ASSERT_STREQ(lupe_elfinfo_build_id_hex(&e, hex, 7), "00c0ff");
	ASSERT_STREQ(lupe_elfinfo_build_id_hex(&e, hex, 1), "");
}

TEST(md5_build_id)
{
	struct lupe_elfinfo e;
	char path[256];

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "md5id", "-Wl,--build-id=md5"));
	ASSERT_READELF(path, &e);
	ASSERT_EQ(e.build_id_len, 16);
}

TEST(no_build_id)
{
	struct lupe_elfinfo e;
	char path[256], hex[8] = "x";

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "noid", "-Wl,--build-id=none"));
	ASSERT_READELF(path, &e);
	ASSERT_EQ(e.build_id_len, 0);
	ASSERT_STREQ(lupe_elfinfo_build_id_hex(&e, hex, sizeof(hex)), "");
}

/* gzip's trailer holds the CRC-32 of its input: the same CRC .gnu_debuglink uses. */
static bool gzip_crc32(const char *path, uint32_t *crc)
{
	char *text = capture("gzip -c '%s' | tail -c 8 | od -An -tu4 -N4", path);
	unsigned long v;
	bool ok;

	if (!text)
		return false;
	ok = sscanf(text, "%lu", &v) == 1;
	*crc = (uint32_t)v;
	free(text);
	return ok;
}

TEST(debuglink_from_objcopy)
{
	struct lupe_elfinfo e, dbg;
	char path[256], debug[300], want[256], dir_hex[130], hex[130];
	uint32_t crc;

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "linked", "-g -Wl,--build-id=sha1"));
	snprintf(debug, sizeof(debug), "%s.debug", path);
	ASSERT(sh("objcopy --only-keep-debug '%s' '%s' && "
		  "objcopy --strip-debug --add-gnu-debuglink='%s' '%s'", path, debug, debug, path));
	ASSERT_READELF(path, &e);
	ASSERT(readelf_debuglink(path, want));
	ASSERT_STREQ(e.debuglink, want);
	ASSERT_STREQ(e.debuglink, "linked.debug");
	if (!gzip_crc32(debug, &crc))
		SKIP("gzip unavailable for the CRC-32 oracle");
	ASSERT_EQ(e.debuglink_crc, crc);

	/* The debug file keeps the build ID and the program headers, with no file bytes. */
	ASSERT_READELF(debug, &dbg);
	ASSERT_STREQ(lupe_elfinfo_build_id_hex(&dbg, dir_hex, sizeof(dir_hex)),
		     lupe_elfinfo_build_id_hex(&e, hex, sizeof(hex)));
	ASSERT_STREQ(dbg.debuglink, "");
}

TEST(system_files)
{
	static const char *const paths[] = {
		"/lib/x86_64-linux-gnu/libc.so.6", "/bin/ls", "/lib64/ld-linux-x86-64.so.2",
	};
	struct lupe_elfinfo e;
	size_t i, tried = 0;

	if (!sh("readelf --version >/dev/null 2>&1"))
		SKIP("readelf missing");
	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		if (access(paths[i], R_OK) != 0)
			continue;
		ASSERT_READELF(paths[i], &e);
		tried++;
	}
	if (!tried)
		SKIP("no system library at the expected paths");
}

/* ---- offsets and biases -------------------------------------------------------- */

TEST(offset_to_vaddr_hand_computed)
{
	struct lupe_elfinfo e = { 0 };
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), va = 0;

	if (page != 4096)
		SKIP("values computed for 4 KiB pages");
	e.nxsegs = 3;
	e.xsegs[0] = (struct lupe_elf_segment){ .vaddr = 0x401100, .offset = 0x1100,
						 .filesz = 0x200, .memsz = 0x200 };
	e.xsegs[1] = (struct lupe_elf_segment){ .vaddr = 0x7000, .offset = 0x5010,
						 .filesz = 0x30, .memsz = 0x30 };
	e.xsegs[2] = (struct lupe_elf_segment){ .vaddr = 0x9000, .offset = 0x9000,
						 .filesz = 0, .memsz = 0x1000 };
	ASSERT_OK(lupe_elfinfo_offset_to_vaddr(&e, 0x1100, &va));
	ASSERT_EQ(va, 0x401100);
	ASSERT_OK(lupe_elfinfo_offset_to_vaddr(&e, 0x1000, &va)); /* page start of the segment */
	ASSERT_EQ(va, 0x401000);
	ASSERT_OK(lupe_elfinfo_offset_to_vaddr(&e, 0x12ff, &va));
	ASSERT_EQ(va, 0x4012ff);
	ASSERT_EQ(lupe_elfinfo_offset_to_vaddr(&e, 0x1300, &va), -ENOENT);
	ASSERT_EQ(lupe_elfinfo_offset_to_vaddr(&e, 0xfff, &va), -ENOENT);
	ASSERT_OK(lupe_elfinfo_offset_to_vaddr(&e, 0x5000, &va));
	ASSERT_EQ(va, 0x6ff0);
	ASSERT_OK(lupe_elfinfo_offset_to_vaddr(&e, 0x503f, &va));
	ASSERT_EQ(va, 0x702f);
	ASSERT_EQ(lupe_elfinfo_offset_to_vaddr(&e, 0x5040, &va), -ENOENT);
	ASSERT_EQ(lupe_elfinfo_offset_to_vaddr(&e, 0x9000, &va), -ENOENT); /* no file bytes */
	ASSERT_EQ(lupe_elfinfo_offset_to_vaddr(&e, UINT64_MAX, &va), -ENOENT);
}

/* A function of this executable, found by nm in the bias test. */
__attribute__((noinline, used)) int lupe_elfinfo_test_marker(int x)
{
	return x + 1;
}

/* The address nm gives a defined symbol (first name match; versions stripped). */
static bool nm_value(const char *path, const char *dynamic, const char *sym, uint64_t *value)
{
	char *text = capture("nm %s --defined-only '%s' 2>/dev/null", dynamic, path);
	char *line, *save = NULL, name[256];
	unsigned long long v;
	bool found = false;
	char kind;

	if (!text)
		return false;
	for (line = strtok_r(text, "\n", &save); line && !found; line = strtok_r(NULL, "\n", &save)) {
		if (sscanf(line, "%llx %c %255s", &v, &kind, name) != 3)
			continue;
		name[strcspn(name, "@")] = '\0';
		if ((kind == 'T' || kind == 'W' || kind == 't') && strcmp(name, sym) == 0) {
			*value = v;
			found = true;
		}
	}
	free(text);
	return found;
}

/* bias = mapping start - offset_to_vaddr(mapping offset); bias + nm's symbol value must be
 * where the function really is in this process. */
static const char *check_bias(const char *path_suffix, const char *nm_flags, const char *sym,
			      uintptr_t real)
{
	static char why[512];
	unsigned long long start, end, off;
	char line[1024], perms[8], path[512];
	struct lupe_elfinfo e;
	uint64_t va, sym_va;
	bool checked = false;
	FILE *maps = fopen("/proc/self/maps", "r");
	int fd;

	if (!maps)
		return "cannot open /proc/self/maps";
	while (fgets(line, sizeof(line), maps)) {
		size_t plen, slen = strlen(path_suffix);

		if (sscanf(line, "%llx-%llx %7s %llx %*s %*s %511s", &start, &end, perms, &off,
			   path) != 5 || !strchr(perms, 'x'))
			continue;
		plen = strlen(path);
		if (plen < slen || strcmp(path + plen - slen, path_suffix) != 0)
			continue;
		if (real < start || real >= end)
			continue;
		fd = open(path, O_RDONLY);
		if (fd < 0 || lupe_elfinfo_from_fd(fd, &e) != 0) {
			if (fd >= 0)
				close(fd);
			snprintf(why, sizeof(why), "cannot parse '%s'", path);
			break;
		}
		close(fd);
		if (lupe_elfinfo_offset_to_vaddr(&e, off, &va) != 0) {
			snprintf(why, sizeof(why), "offset 0x%llx of '%s' not covered", off, path);
			break;
		}
		if (!nm_value(path, nm_flags, sym, &sym_va)) {
			snprintf(why, sizeof(why), "nm has no '%s' in '%s'", sym, path);
			break;
		}
		if ((uint64_t)start - va + sym_va != real) {
			snprintf(why, sizeof(why), "bias 0x%llx + 0x%llx != %p",
				 (unsigned long long)(start - va), (unsigned long long)sym_va,
				 (void *)real);
			break;
		}
		checked = true;
		break;
	}
	fclose(maps);
	if (!checked && !why[0])
		snprintf(why, sizeof(why), "no executable mapping of '*%s' holds %p", path_suffix,
			 (void *)real);
	return checked ? NULL : why;
}

TEST(bias_matches_this_process)
{
	char exe[512];
	const char *why;
	ssize_t n;

	if (!sh("nm --version >/dev/null 2>&1"))
		SKIP("nm missing");
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	ASSERT(n > 0);
	exe[n] = '\0';
	why = check_bias(strrchr(exe, '/'), "", "lupe_elfinfo_test_marker",
			 (uintptr_t)&lupe_elfinfo_test_marker);
	if (why)
		FAIL("executable: %s", why);
	why = check_bias("/libc.so.6", "-D", "getpid", (uintptr_t)&getpid);
	if (why)
		FAIL("libc: %s", why);
}

/* The vDSO parsed in place (its pages are read-only: elfinfo must not write), and a dump
 * of it read back by readelf. */
TEST(vdso_in_place)
{
	unsigned long long start = 0, end = 0;
	struct lupe_elfinfo e, f;
	char line[512], path[256];
	FILE *maps = fopen("/proc/self/maps", "r");
	uint64_t va;

	ASSERT(maps);
	while (fgets(line, sizeof(line), maps))
		if (strstr(line, "[vdso]") && sscanf(line, "%llx-%llx", &start, &end) == 2)
			break;
	fclose(maps);
	if (!end)
		SKIP("no [vdso] mapping");
	ASSERT_OK(lupe_elfinfo_from_mem((const void *)(uintptr_t)start, end - start, &e));
	ASSERT_EQ(e.type, ET_DYN);
	/* The vDSO maps from offset 0 of its image. */
	ASSERT_OK(lupe_elfinfo_offset_to_vaddr(&e, 0, &va));
	if (!tmpdir() || !sh("readelf --version >/dev/null 2>&1"))
		SKIP("no readelf to compare with");
	snprintf(path, sizeof(path), "%s/vdso.so", tmpdir());
	ASSERT(write_file(path, (const void *)(uintptr_t)start, end - start));
	ASSERT_READELF(path, &f);
	ASSERT(memcmp(&e, &f, sizeof(e)) == 0);
}

/* ---- inputs that are not (good) ELF -------------------------------------------- */

TEST(not_elf_and_empty)
{
	struct lupe_elfinfo e;
	char path[256];
	const char *dir = tmpdir();
	int fd;

	ASSERT(dir);
	snprintf(path, sizeof(path), "%s/text", dir);
	ASSERT(write_file(path, "#!/bin/sh\necho this is not ELF\n", 31));
	ASSERT_EQ(parse_both(path, &e), -ENOEXEC);
	snprintf(path, sizeof(path), "%s/empty", dir);
	ASSERT(write_file(path, "", 0));
	ASSERT_EQ(parse_both(path, &e), -ENOEXEC);
	snprintf(path, sizeof(path), "%s/magic-only", dir);
	ASSERT(write_file(path, ELFMAG, SELFMAG));
	ASSERT_EQ(parse_both(path, &e), -EINVAL);

	fd = open(dir, O_RDONLY | O_DIRECTORY);
	ASSERT(fd >= 0);
	ASSERT_EQ(lupe_elfinfo_from_fd(fd, &e), -ENOEXEC);
	close(fd);
	ASSERT_EQ(lupe_elfinfo_from_fd(-1, &e), -EINVAL);
	ASSERT_EQ(lupe_elfinfo_from_mem(NULL, 0, &e), -ENOEXEC);
	ASSERT_EQ(lupe_elfinfo_from_mem(NULL, 10, &e), -EINVAL);
	ASSERT_EQ(lupe_elfinfo_from_mem("x", 1, NULL), -EINVAL);
	/* Failures leave nothing behind. */
	ASSERT_EQ(e.nxsegs, 0);
	ASSERT_EQ(e.build_id_len, 0);
}

/* A result that claims success must describe only bytes the input has. */
static const char *sane(const struct lupe_elfinfo *e, int err, size_t len)
{
	size_t i;

	if (err != 0 && err != -ENOEXEC && err != -EINVAL)
		return "unexpected error code";
	if (err) {
		if (e->nxsegs || e->build_id_len || e->debuglink[0])
			return "failure left fields set";
		return NULL;
	}
	if (e->nxsegs == 0 || e->nxsegs > LUPE_ELF_MAX_XSEGS)
		return "bad segment count";
	for (i = 0; i < e->nxsegs; i++)
		if (e->xsegs[i].offset > len || e->xsegs[i].filesz > len - e->xsegs[i].offset)
			return "segment past the end of the input";
	if (e->build_id_len > LUPE_BUILD_ID_MAX)
		return "build id too long";
	if (memchr(e->debuglink, '\0', sizeof(e->debuglink)) == NULL)
		return "debuglink not terminated";
	return NULL;
}

/* Every prefix of a real file, each in a buffer of exactly that size (ASan sees any read
 * past it). */
static const char *check_prefixes(const unsigned char *file, size_t flen, size_t from, size_t to)
{
	static char why[256];
	struct lupe_elfinfo e;
	unsigned char *buf;
	const char *bad;
	size_t len;
	int err;

	for (len = from; len <= to && len <= flen; len++) {
		buf = malloc(len ? len : 1);
		if (!buf)
			return "out of memory";
		memcpy(buf, file, len);
		err = lupe_elfinfo_from_mem(buf, len, &e);
		free(buf);
		bad = sane(&e, err, len);
		if (!bad && len < SELFMAG && err != -ENOEXEC)
			bad = "a prefix shorter than the magic is not ELF";
		if (!bad && len >= SELFMAG && len < sizeof(Elf64_Ehdr) && err != -EINVAL)
			bad = "a cut header is malformed";
		if (bad) {
			snprintf(why, sizeof(why), "length %zu: %s (err %d)", len, bad, err);
			return why;
		}
	}
	return NULL;
}

TEST(every_truncation)
{
	static const char *const sys[] = { "/bin/ls", "/lib/x86_64-linux-gnu/libc.so.6" };
	char path[256], cut[300];
	struct lupe_elfinfo e;
	unsigned char *file;
	const char *why;
	size_t flen = 0, i;
	size_t lens[] = { 0, 3, 4, 63, 64, 200, 1000, 4096 };

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "trunc", "-Wl,--build-id=sha1"));
	file = read_file(path, &flen);
	ASSERT(file && flen > 2000);
	why = check_prefixes(file, flen, 0, 2000);
	if (!why && flen > 4096)
		why = check_prefixes(file, flen, flen - 4096, flen);
	if (why) {
		free(file);
		FAIL("%s: %s", path, why);
	}
	/* The descriptor path (mmap) on cut files. */
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		int fd, err;

		snprintf(cut, sizeof(cut), "%s.cut", path);
		if (!write_file(cut, file, lens[i] < flen ? lens[i] : flen))
			break;
		fd = open(cut, O_RDONLY);
		err = lupe_elfinfo_from_fd(fd, &e);
		close(fd);
		why = sane(&e, err, lens[i]);
		if (why) {
			free(file);
			FAIL("cut file of %zu bytes: %s", lens[i], why);
		}
	}
	free(file);
	for (i = 0; i < sizeof(sys) / sizeof(sys[0]); i++) {
		file = read_file(sys[i], &flen);
		if (!file)
			continue;
		why = check_prefixes(file, flen, 0, 2000);
		free(file);
		if (why)
			FAIL("%s: %s", sys[i], why);
	}
}

TEST(random_corruption)
{
	char path[256];
	unsigned char *file, *buf;
	struct lupe_elfinfo e;
	size_t flen = 0, pos;
	const char *why;
	uint32_t seed = 12345;
	int round, k, err, ok = 0;

	if (!have_toolchain())
		SKIP("cc, readelf or objcopy missing");
	ASSERT(build(path, sizeof(path), "fuzz", "-g -Wl,--build-id=sha1"));
	ASSERT(sh("objcopy --only-keep-debug '%s' '%s.debug' && objcopy --strip-debug "
		  "--add-gnu-debuglink='%s.debug' '%s'", path, path, path, path));
	file = read_file(path, &flen);
	ASSERT(file && flen > 4096);
	buf = malloc(flen);
	ASSERT(buf);
	for (round = 0; round < 4000; round++) {
		memcpy(buf, file, flen);
		for (k = 0; k < 1 + round % 6; k++) {
			seed = seed * 1103515245u + 12345u; /* fixed sequence: failures reproduce */
			/* Headers and notes sit at the start, the section table at the end. */
			pos = (seed >> 8) % 1024;
			if (seed & 1)
				pos = flen - 1 - (seed >> 8) % 2048;
			buf[pos] = (unsigned char)(seed >> 20);
		}
		err = lupe_elfinfo_from_mem(buf, flen, &e);
		why = sane(&e, err, flen);
		if (why) {
			free(buf);
			free(file);
			FAIL("round %d: %s (err %d)", round, why, err);
		}
		ok += err == 0;
	}
	free(buf);
	free(file);
	/* Most single-byte hits land in bytes that do not matter. */
	ASSERT(ok > 100);
}

/* ---- hand-built images ----------------------------------------------------------- */

struct img {
	unsigned char b[8192];
	size_t len;
	bool is64, msb;
	size_t phoff, phnum, nsec;
};

struct sec {
	const char *name;
	uint32_t type;
	uint64_t offset, size, align;
};

static void put(struct img *m, size_t off, uint64_t v, size_t width)
{
	size_t i;

	for (i = 0; i < width; i++)
		m->b[off + (m->msb ? width - 1 - i : i)] = (unsigned char)(v >> (8 * i));
	if (off + width > m->len)
		m->len = off + width;
}

#define PUT(m, base, T, field, v) put(m, (base) + offsetof(T, field), (v), sizeof(((T *)0)->field))

/* An ELF header and room for nph program headers. */
static void img_init(struct img *m, bool is64, bool msb, uint16_t type, size_t nph)
{
	memset(m, 0, sizeof(*m));
	m->is64 = is64;
	m->msb = msb;
	memcpy(m->b, ELFMAG, SELFMAG);
	m->b[EI_CLASS] = is64 ? ELFCLASS64 : ELFCLASS32;
	m->b[EI_DATA] = msb ? ELFDATA2MSB : ELFDATA2LSB;
	m->b[EI_VERSION] = EV_CURRENT;
	if (is64) {
		PUT(m, 0, Elf64_Ehdr, e_type, type);
		PUT(m, 0, Elf64_Ehdr, e_machine, EM_X86_64);
		PUT(m, 0, Elf64_Ehdr, e_version, EV_CURRENT);
		PUT(m, 0, Elf64_Ehdr, e_ehsize, sizeof(Elf64_Ehdr));
		PUT(m, 0, Elf64_Ehdr, e_phentsize, sizeof(Elf64_Phdr));
		PUT(m, 0, Elf64_Ehdr, e_shentsize, sizeof(Elf64_Shdr));
		PUT(m, 0, Elf64_Ehdr, e_phoff, sizeof(Elf64_Ehdr));
		PUT(m, 0, Elf64_Ehdr, e_phnum, nph);
		m->phoff = sizeof(Elf64_Ehdr);
		m->len = m->phoff + nph * sizeof(Elf64_Phdr);
	} else {
		PUT(m, 0, Elf32_Ehdr, e_type, type);
		PUT(m, 0, Elf32_Ehdr, e_machine, EM_PPC);
		PUT(m, 0, Elf32_Ehdr, e_version, EV_CURRENT);
		PUT(m, 0, Elf32_Ehdr, e_ehsize, sizeof(Elf32_Ehdr));
		PUT(m, 0, Elf32_Ehdr, e_phentsize, sizeof(Elf32_Phdr));
		PUT(m, 0, Elf32_Ehdr, e_shentsize, sizeof(Elf32_Shdr));
		PUT(m, 0, Elf32_Ehdr, e_phoff, sizeof(Elf32_Ehdr));
		PUT(m, 0, Elf32_Ehdr, e_phnum, nph);
		m->phoff = sizeof(Elf32_Ehdr);
		m->len = m->phoff + nph * sizeof(Elf32_Phdr);
	}
	m->phnum = nph;
}

static void img_phdr(struct img *m, size_t i, uint32_t type, uint32_t flags, uint64_t off,
		     uint64_t vaddr, uint64_t filesz, uint64_t memsz, uint64_t align)
{
	if (m->is64) {
		size_t p = m->phoff + i * sizeof(Elf64_Phdr);

		PUT(m, p, Elf64_Phdr, p_type, type);
		PUT(m, p, Elf64_Phdr, p_flags, flags);
		PUT(m, p, Elf64_Phdr, p_offset, off);
		PUT(m, p, Elf64_Phdr, p_vaddr, vaddr);
		PUT(m, p, Elf64_Phdr, p_paddr, vaddr);
		PUT(m, p, Elf64_Phdr, p_filesz, filesz);
		PUT(m, p, Elf64_Phdr, p_memsz, memsz);
		PUT(m, p, Elf64_Phdr, p_align, align);
	} else {
		size_t p = m->phoff + i * sizeof(Elf32_Phdr);

		PUT(m, p, Elf32_Phdr, p_type, type);
		PUT(m, p, Elf32_Phdr, p_flags, flags);
		PUT(m, p, Elf32_Phdr, p_offset, off);
		PUT(m, p, Elf32_Phdr, p_vaddr, vaddr);
		PUT(m, p, Elf32_Phdr, p_paddr, vaddr);
		PUT(m, p, Elf32_Phdr, p_filesz, filesz);
		PUT(m, p, Elf32_Phdr, p_memsz, memsz);
		PUT(m, p, Elf32_Phdr, p_align, align);
	}
}

/* Appends bytes at the next multiple of align; returns their offset. */
static size_t img_append(struct img *m, const void *data, size_t n, size_t align)
{
	size_t off = (m->len + align - 1) & ~(align - 1);

	memcpy(m->b + off, data, n);
	m->len = off + n;
	return off;
}

/* Writes one note (header, name, desc, each padded to align) into dst; returns its size. */
static size_t note(unsigned char *dst, bool msb, uint32_t type, const char *name,
		   uint32_t namesz, const void *desc, uint32_t descsz, size_t align)
{
	struct img tmp = { .msb = msb };
	size_t pos, dpos;

	put(&tmp, 0, namesz, 4);
	put(&tmp, 4, descsz, 4);
	put(&tmp, 8, type, 4);
	memcpy(dst, tmp.b, 12);
	pos = 12;
	if (name)
		memcpy(dst + pos, name, strlen(name) + 1);
	dpos = (pos + (name ? strlen(name) + 1 : 0) + align - 1) & ~(align - 1);
	if (desc)
		memcpy(dst + dpos, desc, descsz);
	return (dpos + (desc ? descsz : 0) + align - 1) & ~(align - 1);
}

/* Appends the section table (a null section, secs, then .shstrtab) and points the ELF
 * header at it. */
static void img_sections(struct img *m, const struct sec *secs, size_t n)
{
	char strtab[512] = "";
	size_t names[16], strpos = 1, i, shoff, shstr_off, entsize;
	size_t total = n + 2;

	for (i = 0; i < n; i++) {
		names[i] = strpos;
		strcpy(strtab + strpos, secs[i].name);
		strpos += strlen(secs[i].name) + 1;
	}
	names[n] = strpos;
	strcpy(strtab + strpos, ".shstrtab");
	strpos += strlen(".shstrtab") + 1;
	shstr_off = img_append(m, strtab, strpos, 1);
	entsize = m->is64 ? sizeof(Elf64_Shdr) : sizeof(Elf32_Shdr);
	shoff = (m->len + 7) & ~(size_t)7;
	m->len = shoff + total * entsize;
	for (i = 1; i < total; i++) {
		size_t s = shoff + i * entsize;
		bool str = i == total - 1;
		const struct sec *c = str ? NULL : &secs[i - 1];

		if (m->is64) {
			PUT(m, s, Elf64_Shdr, sh_name, names[i - 1]);
			PUT(m, s, Elf64_Shdr, sh_type, str ? SHT_STRTAB : c->type);
			PUT(m, s, Elf64_Shdr, sh_offset, str ? shstr_off : c->offset);
			PUT(m, s, Elf64_Shdr, sh_size, str ? strpos : c->size);
			PUT(m, s, Elf64_Shdr, sh_addralign, str ? 1 : c->align);
		} else {
			PUT(m, s, Elf32_Shdr, sh_name, names[i - 1]);
			PUT(m, s, Elf32_Shdr, sh_type, str ? SHT_STRTAB : c->type);
			PUT(m, s, Elf32_Shdr, sh_offset, str ? shstr_off : c->offset);
			PUT(m, s, Elf32_Shdr, sh_size, str ? strpos : c->size);
			PUT(m, s, Elf32_Shdr, sh_addralign, str ? 1 : c->align);
		}
	}
	if (m->is64) {
		PUT(m, 0, Elf64_Ehdr, e_shoff, shoff);
		PUT(m, 0, Elf64_Ehdr, e_shnum, total);
		PUT(m, 0, Elf64_Ehdr, e_shstrndx, total - 1);
	} else {
		PUT(m, 0, Elf32_Ehdr, e_shoff, shoff);
		PUT(m, 0, Elf32_Ehdr, e_shnum, total);
		PUT(m, 0, Elf32_Ehdr, e_shstrndx, total - 1);
	}
	m->nsec = total;
}

/* Parses an image from an exactly-sized heap copy (so ASan sees any overread). */
static int parse_img(const struct img *m, struct lupe_elfinfo *e)
{
	unsigned char *copy = malloc(m->len);
	int err;

	if (!copy)
		return -ENOMEM;
	memcpy(copy, m->b, m->len);
	err = lupe_elfinfo_from_mem(copy, m->len, e);
	free(copy);
	return err;
}

static const unsigned char id20[20] = { 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6,
					7, 8, 9, 10, 11, 12, 13, 14, 15, 0x99 };

/* A minimal ET_DYN: one executable PT_LOAD over the whole image plus a PT_NOTE. */
static void img_basic(struct img *m, bool is64, bool msb, const unsigned char *notes,
		      size_t nlen, size_t note_align)
{
	size_t off;

	img_init(m, is64, msb, ET_DYN, 2);
	off = img_append(m, notes, nlen, note_align);
	img_phdr(m, 1, PT_NOTE, PF_R, off, off, nlen, nlen, note_align);
	img_phdr(m, 0, PT_LOAD, PF_R | PF_X, 0, 0, m->len, m->len, 0x1000);
}

static void fix_load(struct img *m)
{
	img_phdr(m, 0, PT_LOAD, PF_R | PF_X, 0, 0, m->len, m->len, 0x1000);
}

TEST(image_build_id_note_and_readelf_agree)
{
	unsigned char notes[256];
	struct lupe_elfinfo e;
	struct img m;
	char path[256], hex[130];
	size_t n;
	int be;

	for (be = 0; be < 2; be++) {
		for (int is64 = 0; is64 < 2; is64++) {
			n = note(notes, be, NT_GNU_ABI_TAG, "GNU", 4, "\0\0\0\0\3\0\0\0\2\0\0\0\0\0\0\0",
				 16, 4);
			n += note(notes + n, be, NT_GNU_BUILD_ID, "GNU", 4, id20, 20, 4);
			img_basic(&m, is64, be, notes, n, 4);
			ASSERT_OK(parse_img(&m, &e));
			ASSERT_EQ(e.nxsegs, 1);
			ASSERT_EQ(e.xsegs[0].filesz, m.len);
			ASSERT_EQ(e.type, ET_DYN);
			ASSERT_EQ(e.machine, is64 ? EM_X86_64 : EM_PPC);
			ASSERT_EQ(e.build_id_len, 20);
			ASSERT(memcmp(e.build_id, id20, 20) == 0);
			/* readelf reads the hand-built image the same way. */
			if (tmpdir() && sh("readelf --version >/dev/null 2>&1")) {
				snprintf(path, sizeof(path), "%s/img-%d-%d", tmpdir(), be, is64);
				ASSERT(write_file(path, m.b, m.len));
				ASSERT_READELF(path, &e);
				ASSERT_STREQ(lupe_elfinfo_build_id_hex(&e, hex, sizeof(hex)),
					     "deadbeef0102030405060708090a0b0c0d0e0f99");
			}
		}
	}
}

TEST(image_eight_aligned_notes)
{
	unsigned char notes[256], prop[16] = { 0 };
	struct lupe_elfinfo e;
	struct img m;
	size_t n;

	/* A GNU property note first (8-aligned, as on x86-64), then the build ID. */
	n = note(notes, false, NT_GNU_PROPERTY_TYPE_0, "GNU", 4, prop, 12, 8);
	n += note(notes + n, false, NT_GNU_BUILD_ID, "GNU", 4, id20, 20, 8);
	img_basic(&m, true, false, notes, n, 8);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.build_id_len, 20);
	ASSERT(memcmp(e.build_id, id20, 20) == 0);
}

TEST(image_bad_notes_leave_no_build_id)
{
	unsigned char notes[256];
	struct lupe_elfinfo e;
	struct img m;
	unsigned char big[LUPE_BUILD_ID_MAX + 1] = { 1 };
	size_t n;

	/* Huge namesz. */
	n = note(notes, false, NT_GNU_BUILD_ID, "GNU", 0xfffffff0u, id20, 20, 4);
	img_basic(&m, true, false, notes, n, 4);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.build_id_len, 0);
	ASSERT_EQ(e.nxsegs, 1);
	/* namesz of exactly UINT32_MAX. */
	n = note(notes, false, NT_GNU_BUILD_ID, "GNU", 0xffffffffu, id20, 20, 8);
	img_basic(&m, true, false, notes, n, 8);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.build_id_len, 0);
	/* Huge descsz. */
	n = note(notes, false, NT_GNU_BUILD_ID, "GNU", 4, id20, 20, 4);
	notes[4] = notes[5] = notes[6] = notes[7] = 0xff;
	img_basic(&m, true, false, notes, n, 4);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.build_id_len, 0);
	/* descsz one past the note segment's end. */
	n = note(notes, false, NT_GNU_BUILD_ID, "GNU", 4, id20, 20, 4);
	notes[4] = 21;
	img_basic(&m, true, false, notes, n, 4);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.build_id_len, 0);
	/* Owner other than "GNU", and a build ID longer than LUPE_BUILD_ID_MAX. */
	n = note(notes, false, NT_GNU_BUILD_ID, "GNUX", 5, id20, 20, 4);
	n += note(notes + n, false, NT_GNU_BUILD_ID, "GNU", 4, big, sizeof(big), 4);
	img_basic(&m, true, false, notes, n, 4);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.build_id_len, 0);
	/* A note segment outside the file. */
	n = note(notes, false, NT_GNU_BUILD_ID, "GNU", 4, id20, 20, 4);
	img_basic(&m, true, false, notes, n, 4);
	img_phdr(&m, 1, PT_NOTE, PF_R, m.len - 8, 0, 64, 64, 4);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.build_id_len, 0);
	img_phdr(&m, 1, PT_NOTE, PF_R, UINT64_MAX - 4, 0, 64, 64, 4);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.build_id_len, 0);
}

TEST(image_build_id_from_section_only)
{
	unsigned char notes[256];
	struct lupe_elfinfo e;
	struct img m;
	struct sec s;
	size_t n, off;
	char path[256];

	img_init(&m, true, false, ET_EXEC, 1);
	n = note(notes, false, NT_GNU_BUILD_ID, "GNU", 4, id20, 20, 4);
	off = img_append(&m, notes, n, 4);
	s = (struct sec){ ".note.gnu.build-id", SHT_NOTE, off, n, 4 };
	img_sections(&m, &s, 1);
	fix_load(&m);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.type, ET_EXEC);
	ASSERT_EQ(e.build_id_len, 20);
	ASSERT(memcmp(e.build_id, id20, 20) == 0);
	if (tmpdir() && sh("readelf --version >/dev/null 2>&1")) {
		snprintf(path, sizeof(path), "%s/img-section-note", tmpdir());
		ASSERT(write_file(path, m.b, m.len));
		ASSERT_READELF(path, &e);
	}
}

TEST(image_debuglink_byte_order_and_malformed)
{
	struct lupe_elfinfo e;
	struct img m;
	struct sec s;
	unsigned char link[64];
	size_t off;
	int be;

	for (be = 0; be < 2; be++) {
		img_init(&m, !be, be, ET_DYN, 1);
		memset(link, 0, sizeof(link));
		memcpy(link, "x.debug", 8); /* 8 bytes: already 4-aligned */
		{
			struct img crc = { .msb = be };

			put(&crc, 0, 0x12345678, 4);
			memcpy(link + 8, crc.b, 4);
		}
		off = img_append(&m, link, 12, 4);
		s = (struct sec){ ".gnu_debuglink", SHT_PROGBITS, off, 12, 4 };
		img_sections(&m, &s, 1);
		fix_load(&m);
		ASSERT_OK(parse_img(&m, &e));
		ASSERT_STREQ(e.debuglink, "x.debug");
		ASSERT_EQ(e.debuglink_crc, 0x12345678);
	}

	/* Name needing padding: "ab" + NUL + 1 pad, CRC at 4. */
	img_init(&m, true, false, ET_DYN, 1);
	memcpy(link, "ab\0\0\x01\x02\x03\x04", 8);
	off = img_append(&m, link, 8, 4);
	s = (struct sec){ ".gnu_debuglink", SHT_PROGBITS, off, 8, 4 };
	img_sections(&m, &s, 1);
	fix_load(&m);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_STREQ(e.debuglink, "ab");
	ASSERT_EQ(e.debuglink_crc, 0x04030201);

	/* No room for the CRC. */
	img_init(&m, true, false, ET_DYN, 1);
	off = img_append(&m, "abc\0\1\2", 6, 4);
	s = (struct sec){ ".gnu_debuglink", SHT_PROGBITS, off, 6, 4 };
	img_sections(&m, &s, 1);
	fix_load(&m);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_STREQ(e.debuglink, "");

	/* No NUL in the section. */
	img_init(&m, true, false, ET_DYN, 1);
	off = img_append(&m, "abcdefgh", 8, 4);
	s = (struct sec){ ".gnu_debuglink", SHT_PROGBITS, off, 8, 4 };
	img_sections(&m, &s, 1);
	fix_load(&m);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_STREQ(e.debuglink, "");

	/* A path, not a file name. */
	img_init(&m, true, false, ET_DYN, 1);
	off = img_append(&m, "../etc/x\0\0\0\0\1\2\3\4", 16, 4);
	s = (struct sec){ ".gnu_debuglink", SHT_PROGBITS, off, 16, 4 };
	img_sections(&m, &s, 1);
	fix_load(&m);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_STREQ(e.debuglink, "");

	/* A name that does not fit the 256-byte field. */
	{
		unsigned char longname[300 + 8] = { 0 };

		memset(longname, 'a', 300);
		img_init(&m, true, false, ET_DYN, 1);
		off = img_append(&m, longname, sizeof(longname), 4);
		s = (struct sec){ ".gnu_debuglink", SHT_PROGBITS, off, sizeof(longname), 4 };
		img_sections(&m, &s, 1);
		fix_load(&m);
		ASSERT_OK(parse_img(&m, &e));
		ASSERT_STREQ(e.debuglink, "");
	}

	/* The section's data lies past the end of the file. */
	img_init(&m, true, false, ET_DYN, 1);
	s = (struct sec){ ".gnu_debuglink", SHT_PROGBITS, 0x100000, 12, 4 };
	img_sections(&m, &s, 1);
	fix_load(&m);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_STREQ(e.debuglink, "");
}

TEST(image_many_executable_segments)
{
	struct lupe_elfinfo e;
	struct img m;
	size_t i;

	img_init(&m, true, false, ET_DYN, 11);
	m.len = 0x1000; /* every segment (at most 0xa80) lies inside */
	for (i = 0; i < 11; i++)
		img_phdr(&m, i, PT_LOAD, i == 5 ? PF_R : PF_R | PF_X, 0x100 * i, 0x10000 * i,
			 0x80, 0x90, 0x1000);
	ASSERT_OK(parse_img(&m, &e));
	ASSERT_EQ(e.nxsegs, LUPE_ELF_MAX_XSEGS);
	ASSERT_EQ(e.xsegs_dropped, 2);
	/* In program-header order, skipping the non-executable one (index 5). */
	for (i = 0; i < LUPE_ELF_MAX_XSEGS; i++) {
		size_t ph = i < 5 ? i : i + 1;

		ASSERT_EQ(e.xsegs[i].offset, 0x100 * ph);
		ASSERT_EQ(e.xsegs[i].vaddr, 0x10000 * ph);
		ASSERT_EQ(e.xsegs[i].filesz, 0x80);
		ASSERT_EQ(e.xsegs[i].memsz, 0x90);
	}
}

TEST(image_bad_headers)
{
	struct lupe_elfinfo e;
	struct img m;

	/* Program header table past the end, overflowing, or with a foreign entry size. */
	img_init(&m, true, false, ET_DYN, 1);
	fix_load(&m);
	PUT(&m, 0, Elf64_Ehdr, e_phoff, m.len + 1);
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	PUT(&m, 0, Elf64_Ehdr, e_phoff, m.len - 8);
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	PUT(&m, 0, Elf64_Ehdr, e_phoff, UINT64_MAX - 16);
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	PUT(&m, 0, Elf64_Ehdr, e_phoff, sizeof(Elf64_Ehdr));
	PUT(&m, 0, Elf64_Ehdr, e_phnum, 0xfff0);
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	PUT(&m, 0, Elf64_Ehdr, e_phnum, 1);
	PUT(&m, 0, Elf64_Ehdr, e_phentsize, 40);
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	PUT(&m, 0, Elf64_Ehdr, e_phentsize, sizeof(Elf64_Phdr));
	ASSERT_OK(parse_img(&m, &e));

	/* Executable segment past the end. */
	img_phdr(&m, 0, PT_LOAD, PF_R | PF_X, 0, 0, m.len + 1, m.len + 1, 0x1000);
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	img_phdr(&m, 0, PT_LOAD, PF_R | PF_X, UINT64_MAX, 0, 2, 2, 0x1000);
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);

	/* Nothing executable, no program headers, not an executable or library. */
	img_phdr(&m, 0, PT_LOAD, PF_R | PF_W, 0, 0, m.len, m.len, 0x1000);
	ASSERT_EQ(parse_img(&m, &e), -ENOEXEC);
	img_init(&m, true, false, ET_DYN, 0);
	ASSERT_EQ(parse_img(&m, &e), -ENOEXEC);
	img_init(&m, true, false, ET_REL, 1);
	fix_load(&m);
	ASSERT_EQ(parse_img(&m, &e), -ENOEXEC);
	img_init(&m, true, false, ET_CORE, 1);
	fix_load(&m);
	ASSERT_EQ(parse_img(&m, &e), -ENOEXEC);

	/* PN_XNUM: the real count is in section 0's sh_info. */
	img_init(&m, true, false, ET_DYN, 1);
	img_sections(&m, NULL, 0);
	fix_load(&m);
	{
		size_t shoff = m.len - m.nsec * sizeof(Elf64_Shdr);

		PUT(&m, 0, Elf64_Ehdr, e_phnum, PN_XNUM);
		PUT(&m, shoff, Elf64_Shdr, sh_info, 1);
		ASSERT_OK(parse_img(&m, &e));
		ASSERT_EQ(e.nxsegs, 1);
		ASSERT_EQ(e.xsegs[0].filesz, m.len);
		PUT(&m, shoff, Elf64_Shdr, sh_info, 1000);
		ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	}

	/* Bad identification bytes. */
	img_init(&m, true, false, ET_DYN, 1);
	fix_load(&m);
	m.b[EI_CLASS] = 3;
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	m.b[EI_CLASS] = ELFCLASS64;
	m.b[EI_DATA] = 0;
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	m.b[EI_DATA] = ELFDATA2LSB;
	m.b[EI_VERSION] = 2;
	ASSERT_EQ(parse_img(&m, &e), -EINVAL);
	m.b[EI_VERSION] = EV_CURRENT;
	m.b[1] = 'e';
	ASSERT_EQ(parse_img(&m, &e), -ENOEXEC);
}

/* ---- threads ----------------------------------------------------------------------- */

static void *parse_in_thread(void *arg)
{
	struct lupe_elfinfo e;
	intptr_t bad = 0;
	int i, fd;

	for (i = 0; i < 20; i++) {
		fd = open(arg, O_RDONLY);
		bad += lupe_elfinfo_from_fd(fd, &e) != 0;
		close(fd);
	}
	return (void *)bad;
}

TEST(parallel_parses)
{
	static const char *path = "/lib/x86_64-linux-gnu/libc.so.6";
	pthread_t t[4];
	void *bad;
	int i, failures = 0;

	if (access(path, R_OK) != 0)
		SKIP("no %s", path);
	for (i = 0; i < 4; i++)
		ASSERT_OK(pthread_create(&t[i], NULL, parse_in_thread, (void *)path));
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], &bad);
		failures += (int)(intptr_t)bad;
	}
	ASSERT_EQ(failures, 0);
}
