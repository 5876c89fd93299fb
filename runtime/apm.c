/* APM correlation: agent detection, process storage, the agent's socket, messages.
 * See apm.h for the protocol and the security rules. */
#define LUPE_LOG_PREFIX "apm: "
#include "apm.h"
#include "elfinfo.h"
#include "hashmap.h"
#include "log.h"
#include "procmaps.h"

#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define OPTS_HAS(opts, field) \
	((opts) && (opts)->sz >= offsetof(__typeof__(*(opts)), field) + sizeof((opts)->field))
#define OPTS_GET(opts, field, def) (OPTS_HAS(opts, field) ? (opts)->field : (def))

#define LIB_PREFIX "elastic-jvmti-linux-"
#define STORAGE_SYM "elastic_apm_profiling_correlation_process_storage_v1"
#define TLS_SYM "elastic_apm_profiling_correlation_tls_v1"
#ifndef R_AARCH64_TLSDESC
#define R_AARCH64_TLSDESC 1031
#endif

/* A pending agent (storage not yet published) is tried this many times, then dropped. */
#define MAX_ATTEMPTS 32
/* A socket path that did not exist yet, or refused the connection, is tried again this
 * many times. */
#define MAX_SOCKET_ATTEMPTS 8
/* Distinct service names kept; a hostile process restarting under ever new names must not
 * grow the registry without bound. Agents past it label nothing. */
#define MAX_SERVICES 4096
/* A static TLS offset is within the static TLS block: far below this. Anything else is a
 * descriptor not (yet) resolved to static TLS: a lazy resolver's argument, or a pointer
 * for dynamic TLS, which BPF could not follow. */
#define MAX_TLS_OFFSET (1ll << 30)

/* ---- pure helpers ------------------------------------------------------------------- */

static void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_be64(uint8_t *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

void lupe_apm_encode(uint8_t out[LUPE_APM_MSG_LEN], const struct lupe_apm_ids *ids,
		     struct lupe_file_id trace_hash, uint16_t count)
{
	put_le16(out, LUPE_APM_MSG_CORRELATION);
	put_le16(out + 2, LUPE_APM_MSG_MINOR);
	memcpy(out + 4, ids->trace_id, LUPE_APM_TRACE_ID_LEN);
	memcpy(out + 20, ids->tx_id, LUPE_APM_TX_ID_LEN);
	put_be64(out + 28, trace_hash.hi);
	put_be64(out + 36, trace_hash.lo);
	put_le16(out + 44, count);
}

bool lupe_apm_path_matches(const char *path)
{
	const char *base, *p, *end;
	size_t len;

	if (!path)
		return false;
	base = strrchr(path, '/');
	if (!base)
		return false;
	base++;
	len = strlen(base);
	if (len < sizeof(LIB_PREFIX) - 1 + 3 || strncmp(base, LIB_PREFIX, sizeof(LIB_PREFIX) - 1) ||
	    strcmp(base + len - 3, ".so"))
		return false;
	end = base + len - 3;
	for (p = base + sizeof(LIB_PREFIX) - 1; p < end; p++)
		if (!(*p == '_' || *p == '-' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9')))
			return false;
	return true;
}

/* ---- detection ---------------------------------------------------------------------- */

static pthread_once_t libelf_once = PTHREAD_ONCE_INIT;
static bool libelf_ok;

static void libelf_init(void)
{
	libelf_ok = elf_version(EV_CURRENT) != EV_NONE;
}

/* The storage symbol in .dynsym: its value, if defined with 8 bytes. */
static int find_storage(Elf *e, Elf_Scn *dynsym, const GElf_Shdr *sh, uint64_t *vaddr)
{
	Elf_Data *d = elf_getdata(dynsym, NULL);
	size_t i, n;
	GElf_Sym s;

	if (!d || !sh->sh_entsize)
		return -EINVAL;
	n = sh->sh_size / sh->sh_entsize;
	if (n > INT_MAX)
		return -EINVAL;
	for (i = 1; i < n; i++) {
		const char *name;

		if (!gelf_getsym(d, (int)i, &s))
			return -EINVAL;
		name = elf_strptr(e, sh->sh_link, s.st_name);
		if (!name || strcmp(name, STORAGE_SYM))
			continue;
		if (s.st_shndx == SHN_UNDEF || s.st_size != 8) {
			pr_debug("'%s' is %s with %llu bytes, not a defined pointer", STORAGE_SYM,
				 s.st_shndx == SHN_UNDEF ? "undefined" : "defined",
				 (unsigned long long)s.st_size);
			return -ENOTSUP;
		}
		*vaddr = s.st_value;
		return 0;
	}
	return -ENOTSUP;
}

/* The TLSDESC relocation for the TLS symbol, in any RELA section that uses .dynsym. */
static int find_tlsdesc(Elf *e, size_t dynsym_idx, const GElf_Shdr *dynsh, uint32_t rtype,
			uint64_t *vaddr)
{
	Elf_Scn *scn = NULL, *symscn = elf_getscn(e, dynsym_idx);
	Elf_Data *symd = symscn ? elf_getdata(symscn, NULL) : NULL;
	size_t nsyms = dynsh->sh_entsize ? dynsh->sh_size / dynsh->sh_entsize : 0;

	if (!symd)
		return -EINVAL;
	while ((scn = elf_nextscn(e, scn))) {
		GElf_Shdr sh;
		Elf_Data *d;
		size_t i, n;

		if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_RELA || sh.sh_link != dynsym_idx)
			continue;
		d = elf_getdata(scn, NULL);
		if (!d || !sh.sh_entsize)
			return -EINVAL;
		n = sh.sh_size / sh.sh_entsize;
		if (n > INT_MAX)
			return -EINVAL;
		for (i = 0; i < n; i++) {
			size_t symi;
			const char *name;
			GElf_Rela r;
			GElf_Sym s;

			if (!gelf_getrela(d, (int)i, &r))
				return -EINVAL;
			if (GELF_R_TYPE(r.r_info) != rtype)
				continue;
			symi = GELF_R_SYM(r.r_info);
			if (symi == 0 || symi >= nsyms || !gelf_getsym(symd, (int)symi, &s))
				continue;
			name = elf_strptr(e, dynsh->sh_link, s.st_name);
			if (name && !strcmp(name, TLS_SYM)) {
				*vaddr = r.r_offset;
				return 0;
			}
		}
	}
	return -ENOTSUP;
}

int lupe_apm_detect(int fd, const char *path, struct lupe_apm_lib *out)
{
	Elf *e = NULL;
	Elf_Scn *scn = NULL;
	GElf_Ehdr eh;
	GElf_Shdr sh, dynsh;
	size_t dynsym_idx = 0;
	uint32_t rtype;
	int own_fd = -1, err;

	memset(out, 0, sizeof(*out));
	if (!lupe_apm_path_matches(path))
		return -ENOENT;
	pthread_once(&libelf_once, libelf_init);
	if (!libelf_ok)
		return -EIO;
	if (fd < 0) {
		own_fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
		if (own_fd < 0)
			return -errno;
		fd = own_fd;
	}
	e = elf_begin(fd, ELF_C_READ, NULL);
	if (!e || elf_kind(e) != ELF_K_ELF) {
		err = -ENOEXEC;
		goto out;
	}
	if (!gelf_getehdr(e, &eh)) {
		err = -EINVAL;
		goto out;
	}
	if (eh.e_ident[EI_CLASS] != ELFCLASS64) {
		err = -ENOTSUP;
		goto out;
	}
	if (eh.e_machine == EM_X86_64) {
		rtype = R_X86_64_TLSDESC;
	} else if (eh.e_machine == EM_AARCH64) {
		rtype = R_AARCH64_TLSDESC;
	} else {
		err = -ENOTSUP;
		goto out;
	}
	while ((scn = elf_nextscn(e, scn))) {
		if (!gelf_getshdr(scn, &sh)) {
			err = -EINVAL;
			goto out;
		}
		if (sh.sh_type == SHT_DYNSYM) {
			dynsym_idx = elf_ndxscn(scn);
			dynsh = sh;
			break;
		}
	}
	if (!dynsym_idx) {
		err = -ENOTSUP;
		goto out;
	}
	err = find_storage(e, scn, &dynsh, &out->storage_vaddr);
	if (!err)
		err = find_tlsdesc(e, dynsym_idx, &dynsh, rtype, &out->tlsdesc_vaddr);
	if (!err)
		out->machine = eh.e_machine;
	else if (err == -ENOTSUP)
		pr_debug("'%s': named like an agent library, but lacks %s", path,
			 out->storage_vaddr ? "the TLSDESC relocation for " TLS_SYM
					    : "an 8-byte " STORAGE_SYM);
out:
	if (err)
		memset(out, 0, sizeof(*out));
	elf_end(e);
	if (own_fd >= 0)
		close(own_fd);
	return err;
}

/* ---- process storage ---------------------------------------------------------------- */

static int take_string(const uint8_t *buf, size_t len, size_t *off, char *out, uint32_t max)
{
	uint32_t n;
	size_t i;

	if (len - *off < 4)
		return -ENODATA;
	memcpy(&n, buf + *off, 4);
	*off += 4;
	if (n > max)
		return -EINVAL;
	if (len - *off < n)
		return -ENODATA;
	for (i = 0; i < n; i++) {
		uint8_t c = buf[*off + i];

		/* No NUL (C strings), no control bytes (the name becomes a label in outputs). */
		if (c < 0x20 || c == 0x7f)
			return -EINVAL;
	}
	memcpy(out, buf + *off, n);
	out[n] = '\0';
	*off += n;
	return 0;
}

int lupe_apm_parse_storage(const void *buf, size_t len, struct lupe_apm_storage *out)
{
	const uint8_t *b = buf;
	size_t off = 2;
	int err;

	memset(out, 0, sizeof(*out));
	if (len < 2)
		return -ENODATA;
	memcpy(&out->minor, b, 2);
	err = take_string(b, len, &off, out->service, LUPE_APM_SERVICE_MAX);
	if (!err)
		err = take_string(b, len, &off, out->env, LUPE_APM_ENV_MAX);
	if (!err)
		err = take_string(b, len, &off, out->socket, LUPE_APM_SOCKET_MAX);
	if (err)
		memset(out, 0, sizeof(*out));
	return err;
}

/* ---- the registry ------------------------------------------------------------------- */

struct agent {
	pid_t pid;
	struct lupe_apm_lib lib;
	uint64_t bias;
	bool attached;
	bool bpf_told;
	int64_t tls_offset;
	unsigned attempts;
	struct lupe_apm_storage storage;
	const char *service;        /* interned; NULL: none */
	int sock;                   /* connected to the agent; -1: none */
	int socket_err;
	unsigned socket_attempts;
	bool warned_send;
};

struct lupe_apm {
	pthread_mutex_t lock;
	char proc_root[PATH_MAX];
	int (*attached_cb)(void *ctx, pid_t pid, int64_t tls_offset);
	void (*detached_cb)(void *ctx, pid_t pid);
	void *ctx;
	bool no_openat2;
	struct lupe_hashmap *agents;    /* {pid, 0} -> agent */
	struct lupe_hashmap *libs;      /* {host file ID, 0} -> lupe_apm_lib */
	char **services;
	size_t nservices;
	bool services_full_warned;
	struct lupe_apm_stats st;
};

static struct lupe_key pid_key(pid_t pid)
{
	return (struct lupe_key){ (uint64_t)(uint32_t)pid, 0 };
}

static const char *intern(struct lupe_apm *apm, const char *s)
{
	char **grown, *copy;
	size_t i;

	if (!s[0])
		return NULL;
	for (i = 0; i < apm->nservices; i++)
		if (!strcmp(apm->services[i], s))
			return apm->services[i];
	if (apm->nservices >= MAX_SERVICES) {
		if (!apm->services_full_warned)
			pr_warn("more than %d service names: later agents label no samples",
				MAX_SERVICES);
		apm->services_full_warned = true;
		return NULL;
	}
	copy = strdup(s);
	grown = copy ? realloc(apm->services, (apm->nservices + 1) * sizeof(*grown)) : NULL;
	if (!grown) {
		free(copy);
		return NULL;
	}
	apm->services = grown;
	apm->services[apm->nservices++] = copy;
	apm->st.services = apm->nservices;
	return copy;
}

/* Reads up to len bytes of pid's memory at addr, one iovec per page so that a read running
 * into unmapped memory returns what came before it. Returns the bytes read (> 0) or a
 * negative errno: -EFAULT (nothing readable), -ESRCH, -EPERM. */
static ssize_t read_mem(pid_t pid, uint64_t addr, void *buf, size_t len)
{
	struct iovec local = { buf, len }, remote[4];
	uint64_t a = addr, end = addr + len;
	size_t n = 0;
	ssize_t got;

	if (end < addr)
		return -EFAULT;
	while (a < end && n < 4) {
		uint64_t next = (a | 4095) + 1;

		if (next > end || next == 0)
			next = end;
		remote[n].iov_base = (void *)(uintptr_t)a;
		remote[n].iov_len = next - a;
		n++;
		a = next;
	}
	local.iov_len = a - addr;
	got = process_vm_readv(pid, &local, 1, remote, n, 0);
	if (got < 0)
		return errno == EACCES ? -EPERM : -errno;
	return got ? got : -EFAULT;
}

static int read_u64(pid_t pid, uint64_t addr, uint64_t *v)
{
	ssize_t got = read_mem(pid, addr, v, sizeof(*v));

	if (got < 0)
		return (int)got;
	return got == sizeof(*v) ? 0 : -EFAULT;
}

static bool tls_offset_plausible(uint16_t machine, int64_t off)
{
	if (machine == EM_X86_64)
		return off < 0 && off > -MAX_TLS_OFFSET;
	return off > 0 && off < MAX_TLS_OFFSET;
}

/* ---- the agent's socket ------------------------------------------------------------- */

struct creds {
	uid_t euid;
	gid_t egid;
	gid_t groups[64];
	size_t ngroups;
};

/* Uid/Gid (real, effective, saved, fs) and Groups from /proc/PID/status. */
static int read_creds(int piddir, struct creds *c)
{
	char buf[8192], *line, *save = NULL;
	unsigned long r, e;
	ssize_t n;
	int fd, have = 0;

	fd = openat(piddir, "status", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	/* A line cut by the buffer's end could turn gid 1234 into gid 12: drop it. */
	if ((size_t)n == sizeof(buf) - 1) {
		char *nl = strrchr(buf, '\n');

		if (nl)
			nl[1] = '\0';
	}
	memset(c, 0, sizeof(*c));
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (sscanf(line, "Uid: %lu %lu", &r, &e) == 2) {
			c->euid = (uid_t)e;
			have |= 1;
		} else if (sscanf(line, "Gid: %lu %lu", &r, &e) == 2) {
			c->egid = (gid_t)e;
			have |= 2;
		} else if (!strncmp(line, "Groups:", 7)) {
			char *p = line + 7, *q;

			while (c->ngroups < sizeof(c->groups) / sizeof(c->groups[0])) {
				e = strtoul(p, &q, 10);
				if (q == p)
					break;
				c->groups[c->ngroups++] = (gid_t)e;
				p = q;
			}
		}
	}
	return have == 3 ? 0 : -EINVAL;
}

/* Whether the target could write the file by its mode bits, as the kernel decides: the
 * owner's bits for the owner, else the group's for a member, else the others'. */
static bool may_write(const struct stat *st, const struct creds *c)
{
	size_t i;

	if (c->euid == 0)
		return true;
	if (st->st_uid == c->euid)
		return st->st_mode & S_IWUSR;
	if (st->st_gid == c->egid)
		return st->st_mode & S_IWGRP;
	for (i = 0; i < c->ngroups; i++)
		if (st->st_gid == c->groups[i])
			return st->st_mode & S_IWGRP;
	return st->st_mode & S_IWOTH;
}

/* Absolute, no ".." component. */
static int check_path(const char *path)
{
	const char *p = path;

	if (path[0] != '/')
		return -EINVAL;
	while (*p) {
		const char *end = strchrnul(p, '/');

		if (end - p == 2 && p[0] == '.' && p[1] == '.')
			return -EINVAL;
		p = *end ? end + 1 : end;
	}
	return 0;
}

/* Without openat2: one component at a time, no symlink followed at all. */
static int resolve_walk(int rootfd, const char *path)
{
	const char *p = path;
	int cur = rootfd, next;
	char comp[NAME_MAX + 1];
	struct stat st;

	while (*p) {
		const char *end = strchrnul(p, '/');
		size_t len = (size_t)(end - p);

		if (len == 0 || (len == 1 && p[0] == '.')) {
			p = *end ? end + 1 : end;
			continue;
		}
		if (len > NAME_MAX) {
			next = -ENAMETOOLONG;
			goto fail;
		}
		memcpy(comp, p, len);
		comp[len] = '\0';
		next = openat(cur, comp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0) {
			next = -errno;
			goto fail;
		}
		if (cur != rootfd)
			close(cur);
		cur = next;
		if (fstat(cur, &st) < 0) {
			next = -errno;
			goto fail;
		}
		if (S_ISLNK(st.st_mode)) {
			next = -ELOOP;
			goto fail;
		}
		p = *end ? end + 1 : end;
		if (*p && !S_ISDIR(st.st_mode)) {
			next = -ENOTDIR;
			goto fail;
		}
	}
	if (cur == rootfd)
		return -EISDIR;
	return cur;
fail:
	if (cur != rootfd)
		close(cur);
	return next;
}

static int resolve_in_root(struct lupe_apm *apm, int rootfd, const char *path)
{
	struct open_how how = {
		.flags = O_PATH | O_CLOEXEC,
		.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
	};
	long fd;

	if (!apm->no_openat2) {
		fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
		if (fd >= 0)
			return (int)fd;
		if (errno != ENOSYS)
			return -errno;
		apm->no_openat2 = true;
		pr_info("openat2 is missing: socket paths resolve without following symlinks");
	}
	return resolve_walk(rootfd, path);
}

/* Opens and connects a datagram socket to the target's socket path, or returns why not:
 * -EINVAL (relative, ".."), -ENOTSOCK, -EACCES (the target may not write it), a resolution
 * error (-ENOENT, -ELOOP, -EXDEV, ...), or a connect error (-ECONNREFUSED, -EPROTOTYPE).
 * *rejected tells a path refused from a socket that failed. */
static int open_socket(struct lupe_apm *apm, pid_t pid, const char *path, bool *rejected)
{
	char buf[PATH_MAX + 32];
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct creds c;
	struct stat st;
	int piddir = -1, rootfd = -1, fd = -1, s = -1, err;

	*rejected = true;
	err = check_path(path);
	if (err)
		goto out;
	snprintf(buf, sizeof(buf), "%s/%d", apm->proc_root, (int)pid);
	piddir = open(buf, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (piddir < 0) {
		err = errno == ENOENT ? -ESRCH : -errno;
		goto out;
	}
	err = read_creds(piddir, &c);
	if (err)
		goto out;
	/* The target's root, in the target's mount namespace: following this magic link is
	 * the point. */
	rootfd = openat(piddir, "root", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0) {
		err = -errno;
		goto out;
	}
	fd = resolve_in_root(apm, rootfd, path);
	if (fd < 0) {
		err = fd;
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		err = -errno;
		goto out;
	}
	if (!S_ISSOCK(st.st_mode)) {
		err = -ENOTSOCK;
		goto out;
	}
	if (!may_write(&st, &c)) {
		err = -EACCES;
		goto out;
	}
	*rejected = false;
	s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0) {
		err = -errno;
		goto out;
	}
	/* Through the file just checked, never the path again: the same inode whatever
	 * namespace or rename comes between. */
	snprintf(addr.sun_path, sizeof(addr.sun_path), "/proc/self/fd/%d", fd);
	if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		err = -errno;
		goto out;
	}
	err = s;
	s = -1;
out:
	if (s >= 0)
		close(s);
	if (fd >= 0)
		close(fd);
	if (rootfd >= 0)
		close(rootfd);
	if (piddir >= 0)
		close(piddir);
	return err;
}

/* Errors worth another try later: the agent may create its socket after publishing. */
static bool socket_retryable(int err)
{
	return err == -ENOENT || err == -ECONNREFUSED;
}

static void agent_open_socket(struct lupe_apm *apm, struct agent *a)
{
	bool rejected;
	int s;

	if (a->sock >= 0)
		return;
	if (!a->storage.socket[0]) {
		a->socket_err = -ENOENT;
		return;
	}
	a->socket_attempts++;
	s = open_socket(apm, a->pid, a->storage.socket, &rejected);
	if (s >= 0) {
		a->sock = s;
		a->socket_err = 0;
		pr_debug("pid %d: agent socket '%s' connected", a->pid, a->storage.socket);
		return;
	}
	a->socket_err = s;
	if (rejected)
		apm->st.rejected_paths++;
	else
		apm->st.socket_errors++;
	if (!socket_retryable(s) || a->socket_attempts >= MAX_SOCKET_ATTEMPTS)
		pr_warn("pid %d: agent socket '%s' %s: %s", a->pid, a->storage.socket,
			rejected ? "refused" : "unusable", lupe_errstr(s));
}

static void agent_close(struct lupe_apm *apm, struct agent *a)
{
	if (a->sock >= 0)
		close(a->sock);
	a->sock = -1;
	if (a->bpf_told && apm->detached_cb)
		apm->detached_cb(apm->ctx, a->pid);
	a->bpf_told = false;
}

static void agent_free(struct lupe_apm *apm, struct agent *a)
{
	if (!a)
		return;
	agent_close(apm, a);
	free(a);
}

/* One attempt: TLS offset, storage, then BPF and the socket. Returns 0, -EAGAIN (try
 * again later), or a final error. */
static int agent_try(struct lupe_apm *apm, struct agent *a)
{
	uint8_t buf[LUPE_APM_STORAGE_MAX];
	uint64_t off, ptr;
	ssize_t got;
	int err;

	a->attempts++;
	err = read_u64(a->pid, a->bias + a->lib.tlsdesc_vaddr + 8, &off);
	if (err)
		return err == -EFAULT ? -EAGAIN : err;
	if (!tls_offset_plausible(a->lib.machine, (int64_t)off)) {
		pr_debug("pid %d: TLS descriptor argument %#llx is no static TLS offset (yet)",
			 a->pid, (unsigned long long)off);
		return -EAGAIN;
	}
	err = read_u64(a->pid, a->bias + a->lib.storage_vaddr, &ptr);
	if (err)
		return err == -EFAULT ? -EAGAIN : err;
	if (!ptr)
		return -EAGAIN;
	got = read_mem(a->pid, ptr, buf, sizeof(buf));
	if (got < 0)
		return (int)got;
	err = lupe_apm_parse_storage(buf, (size_t)got, &a->storage);
	if (err) {
		/* Every length fits in what was read unless memory ended first: malformed. */
		apm->st.storage_errors++;
		pr_warn("pid %d: agent process storage at %#llx is malformed (%s)", a->pid,
			(unsigned long long)ptr, lupe_errstr(err));
		return -EINVAL;
	}
	a->tls_offset = (int64_t)off;
	a->service = intern(apm, a->storage.service);
	a->attached = true;
	apm->st.agents_found++;
	if (apm->attached_cb) {
		err = apm->attached_cb(apm->ctx, a->pid, a->tls_offset);
		if (err) {
			apm->st.bpf_errors++;
			pr_warn("pid %d: cannot tell BPF about the agent: %s", a->pid, lupe_errstr(err));
		} else {
			a->bpf_told = true;
		}
	}
	pr_info("pid %d: APM agent of service '%s' (env '%s'), TLS offset %lld", a->pid,
		a->storage.service, a->storage.env, (long long)a->tls_offset);
	agent_open_socket(apm, a);
	return 0;
}

/* Runs an attempt and applies its outcome: pending agents stay, failed ones go. */
static int agent_step(struct lupe_apm *apm, struct agent *a)
{
	int err = agent_try(apm, a);

	if (err == -EAGAIN && a->attempts < MAX_ATTEMPTS)
		return err;
	if (err) {
		if (err != -EINVAL)
			apm->st.attach_errors++;
		if (err == -EAGAIN)
			pr_info("pid %d: APM agent never published its storage: given up", a->pid);
		lupe_hashmap__delete(apm->agents, pid_key(a->pid));
		agent_free(apm, a);
	}
	return err;
}

static int attach_locked(struct lupe_apm *apm, pid_t pid, const struct lupe_apm_lib *lib,
			 uint64_t bias)
{
	struct agent *a = lupe_hashmap__get(apm->agents, pid_key(pid));
	void *old = NULL;

	if (a && a->bias == bias && !memcmp(&a->lib, lib, sizeof(*lib)))
		return a->attached ? 0 : agent_step(apm, a);
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->pid = pid;
	a->lib = *lib;
	a->bias = bias;
	a->sock = -1;
	if (lupe_hashmap__set(apm->agents, pid_key(pid), a, &old)) {
		free(a);
		return -ENOMEM;
	}
	agent_free(apm, old);
	return agent_step(apm, a);
}

int lupe_apm__attach(struct lupe_apm *apm, pid_t pid, const struct lupe_apm_lib *lib,
		     uint64_t bias)
{
	int err;

	if (pid <= 0 || !lib)
		return -EINVAL;
	pthread_mutex_lock(&apm->lock);
	err = attach_locked(apm, pid, lib, bias);
	pthread_mutex_unlock(&apm->lock);
	return err;
}

static int retry_one(struct lupe_apm *apm, struct agent *a)
{
	if (!a->attached)
		return agent_step(apm, a) == 0;
	if (a->sock < 0 && socket_retryable(a->socket_err) &&
	    a->socket_attempts < MAX_SOCKET_ATTEMPTS)
		agent_open_socket(apm, a);
	return 0;
}

int lupe_apm__retry(struct lupe_apm *apm, pid_t pid)
{
	struct lupe_key k;
	size_t pos = 0;
	void *v;
	int n = 0;

	pthread_mutex_lock(&apm->lock);
	if (pid > 0) {
		v = lupe_hashmap__get(apm->agents, pid_key(pid));
		if (v)
			n = retry_one(apm, v);
	} else {
		/* agent_step may delete the entry just returned: allowed while iterating. */
		while (lupe_hashmap__next(apm->agents, &pos, &k, &v))
			n += retry_one(apm, v);
	}
	pthread_mutex_unlock(&apm->lock);
	return n;
}

/* Opens a mapped file as the process manager does: map_files (deleted files, other
 * mount namespaces), else the path under the process's root. */
static int open_mapped(struct lupe_apm *apm, pid_t pid, const struct lupe_procmap *m)
{
	char path[PATH_MAX * 2];
	int fd;

	snprintf(path, sizeof(path), "%s/%d/map_files/%llx-%llx", apm->proc_root, (int)pid,
		 (unsigned long long)m->start, (unsigned long long)m->end);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0)
		return fd;
	snprintf(path, sizeof(path), "%s/%d/root%s", apm->proc_root, (int)pid, m->path);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	return fd >= 0 ? fd : -errno;
}

int lupe_apm__scan(struct lupe_apm *apm, pid_t pid)
{
	struct lupe_procmaps maps = { 0 };
	struct lupe_elfinfo *elf = NULL;
	struct lupe_apm_lib lib;
	uint64_t vaddr;
	size_t i;
	int err, fd;

	if (pid <= 0)
		return -EINVAL;
	err = lupe_procmaps_read(apm->proc_root, pid, &maps);
	if (err)
		goto out;
	elf = malloc(sizeof(*elf));
	if (!elf) {
		err = -ENOMEM;
		goto out;
	}
	err = -ENOENT;
	for (i = 0; i < maps.count && err == -ENOENT; i++) {
		const struct lupe_procmap *m = &maps.maps[i];

		if (m->kind != LUPE_MAP_FILE || !lupe_apm_path_matches(m->path))
			continue;
		fd = open_mapped(apm, pid, m);
		if (fd < 0) {
			err = fd;
			break;
		}
		err = lupe_elfinfo_from_fd(fd, elf);
		if (!err)
			err = lupe_elfinfo_offset_to_vaddr(elf, m->file_offset, &vaddr);
		if (!err)
			err = lupe_apm_detect(fd, m->path, &lib);
		close(fd);
		pthread_mutex_lock(&apm->lock);
		if (!err)
			apm->st.libs_detected++;
		else
			apm->st.libs_rejected++;
		if (!err)
			err = attach_locked(apm, pid, &lib, m->start - vaddr);
		pthread_mutex_unlock(&apm->lock);
		if (err == -ENOENT) /* the next mapping may be the one */
			err = -ENOTSUP;
	}
out:
	free(elf);
	lupe_procmaps_release(&maps);
	return err;
}

void lupe_apm__pid_exit(struct lupe_apm *apm, pid_t pid)
{
	struct agent *a;

	pthread_mutex_lock(&apm->lock);
	a = lupe_hashmap__delete(apm->agents, pid_key(pid));
	agent_free(apm, a);
	pthread_mutex_unlock(&apm->lock);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static void agent_send(struct lupe_apm *apm, struct agent *a, const struct lupe_apm_ids *ids,
		       struct lupe_file_id hash, uint32_t count)
{
	uint8_t msg[LUPE_APM_MSG_LEN];

	while (count > 0 && a->sock >= 0) {
		uint16_t n = count > UINT16_MAX ? UINT16_MAX : (uint16_t)count;

		count -= n;
		lupe_apm_encode(msg, ids, hash, n);
		if (send(a->sock, msg, sizeof(msg), MSG_DONTWAIT | MSG_NOSIGNAL) == sizeof(msg)) {
			apm->st.sent++;
			apm->st.sent_samples += n;
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
			apm->st.dropped++;
			apm->st.dropped_samples += n;
			continue;
		}
		apm->st.errors++;
		apm->st.error_samples += n;
		if (!a->warned_send)
			pr_warn("pid %d: sending to the agent failed: %s", a->pid, lupe_errstr(errno));
		a->warned_send = true;
		if (errno == ECONNREFUSED || errno == ENOTCONN) {
			/* The agent closed its socket: maybe it makes a new one (retry). */
			a->socket_err = -errno;
			a->socket_attempts = 0;
			close(a->sock);
			a->sock = -1;
		}
	}
	/* What was left when the socket closed above. */
	apm->st.error_samples += count;
}

const char *lupe_apm__notify(struct lupe_apm *apm, pid_t pid, const struct lupe_apm_ids *ids,
			     struct lupe_file_id trace_hash, uint32_t count)
{
	const char *service = NULL;
	struct agent *a;

	pthread_mutex_lock(&apm->lock);
	a = lupe_hashmap__get(apm->agents, pid_key(pid));
	if (!a || !a->attached)
		goto out;
	service = a->service;
	if (!ids || all_zero(ids->tx_id, sizeof(ids->tx_id))) {
		apm->st.no_transaction++;
		apm->st.no_transaction_samples += count;
		goto out;
	}
	if (a->sock < 0) {
		apm->st.no_socket++;
		apm->st.no_socket_samples += count;
		goto out;
	}
	agent_send(apm, a, ids, trace_hash, count);
out:
	pthread_mutex_unlock(&apm->lock);
	return service;
}

const char *lupe_apm__service(struct lupe_apm *apm, pid_t pid)
{
	const char *service = NULL;
	struct agent *a;

	pthread_mutex_lock(&apm->lock);
	a = lupe_hashmap__get(apm->agents, pid_key(pid));
	if (a && a->attached)
		service = a->service;
	pthread_mutex_unlock(&apm->lock);
	return service;
}

int lupe_apm__agent_info(struct lupe_apm *apm, pid_t pid, struct lupe_apm_agent_info *out)
{
	struct agent *a;
	int err = -ENOENT;

	pthread_mutex_lock(&apm->lock);
	a = lupe_hashmap__get(apm->agents, pid_key(pid));
	if (a) {
		memset(out, 0, sizeof(*out));
		out->pid = a->pid;
		out->attached = a->attached;
		out->tls_offset = a->tls_offset;
		out->bias = a->bias;
		out->lib = a->lib;
		out->storage = a->storage;
		out->socket_open = a->sock >= 0;
		out->socket_err = a->socket_err;
		err = 0;
	}
	pthread_mutex_unlock(&apm->lock);
	return err;
}

void lupe_apm__stats(struct lupe_apm *apm, struct lupe_apm_stats *out)
{
	struct lupe_key k;
	size_t pos = 0;
	void *v;

	pthread_mutex_lock(&apm->lock);
	*out = apm->st;
	out->agents = out->pending = 0;
	while (lupe_hashmap__next(apm->agents, &pos, &k, &v)) {
		if (((struct agent *)v)->attached)
			out->agents++;
		else
			out->pending++;
	}
	pthread_mutex_unlock(&apm->lock);
}

/* ---- process-manager hooks ---------------------------------------------------------- */

void lupe_apm__file_loaded(struct lupe_apm *apm, const struct lupe_exe_info *info)
{
	struct lupe_apm_lib *lib;
	void *old = NULL;
	int err;

	if (!info || info->vdso || !lupe_apm_path_matches(info->path))
		return;
	lib = malloc(sizeof(*lib));
	if (!lib)
		return;
	err = lupe_apm_detect(info->fd, info->path, lib);
	pthread_mutex_lock(&apm->lock);
	if (err) {
		apm->st.libs_rejected++;
		pr_info("'%s': not a usable APM agent library: %s", info->path, lupe_errstr(err));
		free(lib);
	} else if (lupe_hashmap__set(apm->libs, (struct lupe_key){ info->host_file_id, 0 }, lib,
				     &old)) {
		free(lib);
	} else {
		apm->st.libs_detected++;
		free(old);
	}
	pthread_mutex_unlock(&apm->lock);
}

void lupe_apm__file_unloaded(struct lupe_apm *apm, uint64_t host_file_id)
{
	pthread_mutex_lock(&apm->lock);
	free(lupe_hashmap__delete(apm->libs, (struct lupe_key){ host_file_id, 0 }));
	pthread_mutex_unlock(&apm->lock);
}

int lupe_apm__mapping_added(struct lupe_apm *apm, pid_t pid, const struct lupe_mapping *m)
{
	const struct lupe_apm_lib *lib;
	struct lupe_apm_lib copy;
	int err = -ENOENT;

	pthread_mutex_lock(&apm->lock);
	lib = lupe_hashmap__get(apm->libs, (struct lupe_key){ lupe_file_id_host(m->file_id), 0 });
	if (lib) {
		copy = *lib;
		err = attach_locked(apm, pid, &copy, m->bias);
	}
	pthread_mutex_unlock(&apm->lock);
	return err;
}

struct apm_reporter {
	struct lupe_symbol_reporter base;
	struct lupe_apm *apm;
	struct lupe_symbol_reporter *inner;
};

static void rep_loaded(struct lupe_symbol_reporter *r, const struct lupe_exe_info *info)
{
	struct apm_reporter *ar = (struct apm_reporter *)r;

	if (ar->inner)
		ar->inner->ops->executable_loaded(ar->inner, info);
	lupe_apm__file_loaded(ar->apm, info);
}

static void rep_unloaded(struct lupe_symbol_reporter *r, uint64_t host)
{
	struct apm_reporter *ar = (struct apm_reporter *)r;

	if (ar->inner)
		ar->inner->ops->executable_unloaded(ar->inner, host);
	lupe_apm__file_unloaded(ar->apm, host);
}

static void rep_free(struct lupe_symbol_reporter *r)
{
	struct apm_reporter *ar = (struct apm_reporter *)r;

	if (ar->inner)
		ar->inner->ops->free(ar->inner);
	free(ar);
}

static const struct lupe_symbol_reporter_ops apm_reporter_ops = {
	.executable_loaded = rep_loaded,
	.executable_unloaded = rep_unloaded,
	.free = rep_free,
};

struct lupe_symbol_reporter *lupe_apm_reporter_new(struct lupe_apm *apm,
						   struct lupe_symbol_reporter *inner)
{
	struct apm_reporter *ar = calloc(1, sizeof(*ar));

	if (!ar || !apm) {
		free(ar);
		if (inner)
			inner->ops->free(inner);
		errno = apm ? ENOMEM : EINVAL;
		return NULL;
	}
	ar->base.ops = &apm_reporter_ops;
	ar->apm = apm;
	ar->inner = inner;
	return &ar->base;
}

struct apm_ebpf {
	struct lupe_ebpf_handler base;
	struct lupe_apm *apm;
	struct lupe_ebpf_handler *inner;
};

#define INNER(h) (((struct apm_ebpf *)(h))->inner)

static int eb_new_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	return INNER(h) ? INNER(h)->ops->new_pid(INNER(h), pid) : 0;
}

static int eb_delete_pid(struct lupe_ebpf_handler *h, pid_t pid)
{
	lupe_apm__pid_exit(((struct apm_ebpf *)h)->apm, pid);
	return INNER(h) ? INNER(h)->ops->delete_pid(INNER(h), pid) : 0;
}

static int eb_add_mapping(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	int err = INNER(h) ? INNER(h)->ops->add_mapping(INNER(h), pid, m) : 0;

	/* The agent's own outcome is counted in its registry, not as a BPF error. */
	lupe_apm__mapping_added(((struct apm_ebpf *)h)->apm, pid, m);
	return err;
}

static int eb_delete_mapping(struct lupe_ebpf_handler *h, pid_t pid, const struct lupe_mapping *m)
{
	return INNER(h) ? INNER(h)->ops->delete_mapping(INNER(h), pid, m) : 0;
}

static int eb_load_deltas(struct lupe_ebpf_handler *h, uint64_t host,
			  const struct lupe_interval_data *d)
{
	return INNER(h) ? INNER(h)->ops->load_deltas(INNER(h), host, d) : 0;
}

static int eb_unload_deltas(struct lupe_ebpf_handler *h, uint64_t host)
{
	return INNER(h) ? INNER(h)->ops->unload_deltas(INNER(h), host) : 0;
}

static void eb_free(struct lupe_ebpf_handler *h)
{
	if (INNER(h))
		INNER(h)->ops->free(INNER(h));
	free(h);
}

static const struct lupe_ebpf_handler_ops apm_ebpf_ops = {
	.new_pid = eb_new_pid,
	.delete_pid = eb_delete_pid,
	.add_mapping = eb_add_mapping,
	.delete_mapping = eb_delete_mapping,
	.load_deltas = eb_load_deltas,
	.unload_deltas = eb_unload_deltas,
	.free = eb_free,
};

struct lupe_ebpf_handler *lupe_apm_ebpf_new(struct lupe_apm *apm, struct lupe_ebpf_handler *inner)
{
	struct apm_ebpf *ae = calloc(1, sizeof(*ae));

	if (!ae || !apm) {
		free(ae);
		if (inner)
			inner->ops->free(inner);
		errno = apm ? ENOMEM : EINVAL;
		return NULL;
	}
	ae->base.ops = &apm_ebpf_ops;
	ae->apm = apm;
	ae->inner = inner;
	return &ae->base;
}

struct lupe_ebpf_handler *lupe_apm_ebpf_inner(struct lupe_ebpf_handler *h)
{
	return h && h->ops == &apm_ebpf_ops ? INNER(h) : NULL;
}

/* ---- life ------------------------------------------------------------------------- */

struct lupe_apm *lupe_apm__new(const struct lupe_apm_opts *opts)
{
	const char *root = OPTS_GET(opts, proc_root, NULL);
	struct lupe_apm *apm;

	if (!root)
		root = "/proc";
	if (strlen(root) >= PATH_MAX - 64) {
		errno = EINVAL;
		return NULL;
	}
	apm = calloc(1, sizeof(*apm));
	if (!apm)
		goto nomem;
	pthread_mutex_init(&apm->lock, NULL);
	snprintf(apm->proc_root, sizeof(apm->proc_root), "%s", root);
	apm->attached_cb = OPTS_GET(opts, attached, NULL);
	apm->detached_cb = OPTS_GET(opts, detached, NULL);
	apm->ctx = OPTS_GET(opts, ctx, NULL);
	apm->no_openat2 = OPTS_GET(opts, no_openat2, false);
	apm->agents = lupe_hashmap__new();
	apm->libs = lupe_hashmap__new();
	if (!apm->agents || !apm->libs) {
		lupe_apm__free(apm);
		goto nomem;
	}
	return apm;
nomem:
	errno = ENOMEM;
	return NULL;
}

void lupe_apm__free(struct lupe_apm *apm)
{
	struct lupe_key k;
	size_t pos = 0, i;
	void *v;

	if (!apm)
		return;
	if (apm->agents) {
		while (lupe_hashmap__next(apm->agents, &pos, &k, &v)) {
			struct agent *a = v;

			a->bpf_told = false; /* BPF goes away with its owner, not told one by one */
			agent_free(apm, a);
		}
		lupe_hashmap__free(apm->agents);
	}
	lupe_hashmap__free_values(apm->libs, free);
	for (i = 0; i < apm->nservices; i++)
		free(apm->services[i]);
	free(apm->services);
	pthread_mutex_destroy(&apm->lock);
	free(apm);
}
