/* File IDs checked against sha256sum over the same bytes assembled by the shell (head,
 * tail, and the length printed big-endian from stat), and the two mappers. */
#include "fileid.h"
#include "lupe_test.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* Runs the shell oracle on path; writes the first 32 hex digits of its SHA-256 into
 * hex[33]. Returns 0 or -1. The path must not contain a single quote. */
static int oracle_id(const char *path, char hex[33])
{
	char cmd[2048], line[128];
	FILE *p;
	int ok;

	snprintf(cmd, sizeof(cmd),
		 "f='%s'; s=$(stat -L -c %%s \"$f\") || exit 1; "
		 "{ head -c 4096 \"$f\"; tail -c 4096 \"$f\"; "
		 "printf \"$(printf '\\\\%%03o' $((s>>56&255)) $((s>>48&255)) $((s>>40&255)) "
		 "$((s>>32&255)) $((s>>24&255)) $((s>>16&255)) $((s>>8&255)) $((s&255)))\"; "
		 "} | sha256sum",
		 path);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	ok = fgets(line, sizeof(line), p) != NULL;
	if (pclose(p) != 0 || !ok || strlen(line) < 64)
		return -1;
	memcpy(hex, line, 32);
	hex[32] = '\0';
	return 0;
}

/* Creates dir/name with n pseudo-random bytes. */
static int make_file(const char *dir, const char *name, size_t n, char *path, size_t pathsz)
{
	uint32_t x = 2463534242u ^ (uint32_t)n;
	unsigned char buf[1024];
	size_t done = 0, i, k;
	FILE *f;

	snprintf(path, pathsz, "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f)
		return -1;
	while (done < n) {
		k = n - done < sizeof(buf) ? n - done : sizeof(buf);
		for (i = 0; i < k; i++) {
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			buf[i] = (unsigned char)x;
		}
		if (fwrite(buf, 1, k, f) != k)
			break;
		done += k;
	}
	return fclose(f) == 0 && done == n ? 0 : -1;
}

static unsigned char *slurp(const char *path, size_t *len)
{
	unsigned char *buf = NULL;
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t r;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) == 0 && (buf = malloc(st.st_size ? st.st_size : 1))) {
		r = read(fd, buf, st.st_size);
		if (r != st.st_size) {
			free(buf);
			buf = NULL;
		}
		*len = (size_t)st.st_size;
	}
	close(fd);
	return buf;
}

/* Checks one file through both entry points against the oracle; returns a message or
 * NULL. */
static const char *check_file(const char *path, char *why, size_t whysz)
{
	struct lupe_file_id id, mid, parsed;
	char want[33], got[33], got_mem[33];
	unsigned char *buf;
	off_t before;
	size_t len;
	int fd, err;

	if (oracle_id(path, want)) {
		snprintf(why, whysz, "%s: shell oracle failed", path);
		return why;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, whysz, "%s: open: %s", path, strerror(errno));
		return why;
	}
	/* pread leaves the file offset alone. */
	before = lseek(fd, 3, SEEK_SET);
	err = lupe_file_id_from_fd(fd, &id);
	if (lseek(fd, 0, SEEK_CUR) != before) {
		close(fd);
		snprintf(why, whysz, "%s: the file offset moved", path);
		return why;
	}
	close(fd);
	if (err) {
		snprintf(why, whysz, "%s: from_fd returned %d", path, err);
		return why;
	}
	lupe_file_id_format(id, got);
	if (strcmp(got, want)) {
		snprintf(why, whysz, "%s: from_fd %s, sha256sum %s", path, got, want);
		return why;
	}
	if (lupe_file_id_parse(want, &parsed) || parsed.hi != id.hi || parsed.lo != id.lo ||
	    lupe_file_id_host(id) != parsed.hi) {
		snprintf(why, whysz, "%s: parse(%s) disagrees with from_fd", path, want);
		return why;
	}
	buf = slurp(path, &len);
	if (!buf) {
		snprintf(why, whysz, "%s: cannot read", path);
		return why;
	}
	lupe_file_id_from_bytes(buf, len, &mid);
	free(buf);
	lupe_file_id_format(mid, got_mem);
	if (strcmp(got_mem, want)) {
		snprintf(why, whysz, "%s: from_bytes %s, sha256sum %s", path, got_mem, want);
		return why;
	}
	return NULL;
}

TEST(fileid_matches_sha256sum)
{
	static const size_t sizes[] = { 0, 100, 4095, 4096, 4097, 8192, 10000 };
	char dir[] = "/tmp/lupe-fileid-XXXXXX", path[256], name[32], why[512];
	const char *msg = NULL;
	size_t i;

	if (!mkdtemp(dir))
		FAIL("mkdtemp: %s", strerror(errno));
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]) && !msg; i++) {
		snprintf(name, sizeof(name), "f%zu", sizes[i]);
		if (make_file(dir, name, sizes[i], path, sizeof(path))) {
			snprintf(why, sizeof(why), "cannot create %s", path);
			unlink(path);
			msg = why;
			break;
		}
		msg = check_file(path, why, sizeof(why));
		unlink(path);
	}
	rmdir(dir);
	if (msg)
		FAIL("%s", msg);
	msg = check_file("/bin/ls", why, sizeof(why));
	if (msg)
		FAIL("%s", msg);
}

TEST(fileid_from_bytes_null_empty)
{
	struct lupe_file_id a, b;
	char zero[1] = { 0 };

	/* The empty file's ID does not depend on the buffer pointer. */
	lupe_file_id_from_bytes(NULL, 0, &a);
	lupe_file_id_from_bytes(zero, 0, &b);
	ASSERT(a.hi == b.hi && a.lo == b.lo);
	/* Content matters: one byte differs from the empty file. */
	lupe_file_id_from_bytes(zero, 1, &b);
	ASSERT(a.hi != b.hi || a.lo != b.lo);
}

TEST(fileid_rejects_non_files)
{
	struct lupe_file_id id;
	int fds[2], fd;

	ASSERT_EQ(lupe_file_id_from_fd(-1, &id), -EBADF);
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(lupe_file_id_from_fd(fd, &id), -EINVAL);
	close(fd);
	ASSERT_OK(pipe(fds));
	ASSERT_EQ(lupe_file_id_from_fd(fds[0], &id), -EINVAL);
	close(fds[0]);
	close(fds[1]);
	/* A directory is not a file either. */
	fd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ASSERT(fd >= 0);
	ASSERT_EQ(lupe_file_id_from_fd(fd, &id), -EINVAL);
	close(fd);
}

TEST(fileid_format_parse)
{
	struct lupe_file_id id = { 0x0123456789abcdefULL, 0xfedcba9876543210ULL }, out;
	char buf[LUPE_FILE_ID_HEX_LEN + 1];

	ASSERT(lupe_file_id_format(id, buf) == buf);
	ASSERT_STREQ(buf, "0123456789abcdeffedcba9876543210");
	ASSERT_OK(lupe_file_id_parse("0123456789ABCDEFfedcba9876543210", &out));
	ASSERT(out.hi == id.hi && out.lo == id.lo);
	ASSERT_OK(lupe_file_id_parse("00000000000000000000000000000000", &out));
	ASSERT(out.hi == 0 && out.lo == 0);
	lupe_file_id_format((struct lupe_file_id){ UINT64_MAX, 1 }, buf);
	ASSERT_STREQ(buf, "ffffffffffffffff0000000000000001");

	out.hi = out.lo = 42;
	ASSERT_EQ(lupe_file_id_parse(NULL, &out), -EINVAL);
	ASSERT_EQ(lupe_file_id_parse("", &out), -EINVAL);
	ASSERT_EQ(lupe_file_id_parse("0123456789abcdeffedcba987654321", &out), -EINVAL);
	ASSERT_EQ(lupe_file_id_parse("0123456789abcdeffedcba98765432100", &out), -EINVAL);
	ASSERT_EQ(lupe_file_id_parse("0123456789abcdeffedcba987654321g", &out), -EINVAL);
	ASSERT_EQ(lupe_file_id_parse("0x23456789abcdeffedcba9876543210", &out), -EINVAL);
	ASSERT_EQ(lupe_file_id_parse(" 123456789abcdeffedcba9876543210", &out), -EINVAL);
	/* Failure leaves *out alone. */
	ASSERT(out.hi == 42 && out.lo == 42);
}

static struct lupe_file_id fid(uint64_t n)
{
	return (struct lupe_file_id){ n * 3 + 1, ~n };
}

static int has(struct lupe_fileid_mapper *m, uint64_t host)
{
	struct lupe_file_id out;

	if (!m->ops->get(m, host, &out))
		return 0;
	return out.hi == fid(host).hi && out.lo == fid(host).lo ? 1 : -1;
}

TEST(fileid_mapper_map)
{
	struct lupe_fileid_mapper *m = lupe_fileid_mapper_new_map();
	struct lupe_file_id out;
	uint64_t i;

	ASSERT(m);
	ASSERT(!m->ops->get(m, 5, &out));
	for (i = 0; i < 10000; i++)
		ASSERT_OK(m->ops->set(m, i * 0x10001, fid(i * 0x10001)));
	for (i = 0; i < 10000; i++)
		ASSERT_EQ(has(m, i * 0x10001), 1);
	ASSERT_EQ(has(m, 2), 0);
	/* Overwrite keeps one entry per host. */
	ASSERT_OK(m->ops->set(m, 0, (struct lupe_file_id){ 7, 8 }));
	ASSERT(m->ops->get(m, 0, &out) && out.hi == 7 && out.lo == 8);
	ASSERT_EQ(lupe_fileid_mapper_evictions(m), 0);
	lupe_fileid_mapper_free(m);
	lupe_fileid_mapper_free(NULL);
	ASSERT_EQ(lupe_fileid_mapper_evictions(NULL), 0);
}

TEST(fileid_mapper_lru_capacity_3)
{
	struct lupe_fileid_mapper *m = lupe_fileid_mapper_new_lru(3);
	struct lupe_file_id out;

	ASSERT(m);
	ASSERT(!m->ops->get(m, 1, &out));
	ASSERT_OK(m->ops->set(m, 1, fid(1)));
	ASSERT_OK(m->ops->set(m, 2, fid(2)));
	ASSERT_OK(m->ops->set(m, 3, fid(3)));
	ASSERT_EQ(lupe_fileid_mapper_evictions(m), 0);
	/* Recency now 3, 2, 1; reading 1 makes it 1, 3, 2, so 2 is the one to go. */
	ASSERT_EQ(has(m, 1), 1);
	ASSERT_OK(m->ops->set(m, 4, fid(4)));
	ASSERT_EQ(lupe_fileid_mapper_evictions(m), 1);
	ASSERT_EQ(has(m, 2), 0);
	/* Recency was 4, 1, 3; these reads make it 3, 1, 4 (has() refreshes). */
	ASSERT_EQ(has(m, 4), 1);
	ASSERT_EQ(has(m, 1), 1);
	ASSERT_EQ(has(m, 3), 1);
	/* Updating an existing host neither evicts nor grows, and refreshes it. */
	ASSERT_OK(m->ops->set(m, 4, fid(4)));
	ASSERT_EQ(lupe_fileid_mapper_evictions(m), 1);
	/* Recency 4, 3, 1: the next insert evicts 1. */
	ASSERT_OK(m->ops->set(m, 5, fid(5)));
	ASSERT_EQ(lupe_fileid_mapper_evictions(m), 2);
	ASSERT_EQ(has(m, 1), 0);
	ASSERT_EQ(has(m, 3), 1);
	ASSERT_EQ(has(m, 4), 1);
	ASSERT_EQ(has(m, 5), 1);
	lupe_fileid_mapper_free(m);
}

TEST(fileid_mapper_lru_default_capacity)
{
	struct lupe_fileid_mapper *m = lupe_fileid_mapper_new_lru(0);
	uint64_t i;

	ASSERT(m);
	for (i = 0; i < 32768; i++)
		ASSERT_OK(m->ops->set(m, i, fid(i)));
	ASSERT_EQ(lupe_fileid_mapper_evictions(m), 0);
	ASSERT_OK(m->ops->set(m, 32768, fid(32768)));
	ASSERT_EQ(lupe_fileid_mapper_evictions(m), 1);
	ASSERT_EQ(has(m, 0), 0);
	ASSERT_EQ(has(m, 1), 1);
	ASSERT_EQ(has(m, 32768), 1);
	/* A long stream through a full cache keeps exactly capacity entries. */
	for (i = 40000; i < 140000; i++)
		ASSERT_OK(m->ops->set(m, i, fid(i)));
	ASSERT_EQ(lupe_fileid_mapper_evictions(m), 1 + 100000);
	ASSERT_EQ(has(m, 140000 - 32768 - 1), 0);
	ASSERT_EQ(has(m, 140000 - 32768), 1);
	lupe_fileid_mapper_free(m);
}
