/* ELF facts for the process manager. libelf translates headers (class, byte order); every
 * offset and size taken from them that points into the file is checked here against the
 * file size before use, because libelf does not check them all (the program-header table
 * in particular). Note and debuglink bytes are read raw and decoded here in the file's
 * byte order. */
#define LUPE_LOG_PREFIX "elfinfo: "
#include "elfinfo.h"
#include "log.h"

#include <errno.h>
#include <gelf.h>
#include <libelf.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_once_t libelf_once = PTHREAD_ONCE_INIT;
static bool libelf_ok;

static void libelf_init(void)
{
	libelf_ok = elf_version(EV_CURRENT) != EV_NONE;
}

static int libelf_ready(void)
{
	pthread_once(&libelf_once, libelf_init);
	if (!libelf_ok) {
		pr_warn("libelf refuses ELF version %d", EV_CURRENT);
		return -EIO;
	}
	return 0;
}

/* Decides from the identification bytes (n of them) and the file size whether this is an
 * ELF file libelf can take: -ENOEXEC when it is not ELF at all, -EINVAL when it claims to
 * be ELF but the identification or the header is cut short or invalid. */
static int check_ident(const unsigned char *id, size_t n, uint64_t size)
{
	uint64_t ehsize;

	if (n < SELFMAG || memcmp(id, ELFMAG, SELFMAG) != 0)
		return -ENOEXEC;
	if (n < EI_NIDENT) {
		pr_debug("truncated ELF identification (%zu bytes)", n);
		return -EINVAL;
	}
	if (id[EI_CLASS] != ELFCLASS32 && id[EI_CLASS] != ELFCLASS64) {
		pr_debug("bad ELF class %u", id[EI_CLASS]);
		return -EINVAL;
	}
	if (id[EI_DATA] != ELFDATA2LSB && id[EI_DATA] != ELFDATA2MSB) {
		pr_debug("bad ELF data encoding %u", id[EI_DATA]);
		return -EINVAL;
	}
	if (id[EI_VERSION] != EV_CURRENT) {
		pr_debug("bad ELF version %u", id[EI_VERSION]);
		return -EINVAL;
	}
	ehsize = id[EI_CLASS] == ELFCLASS64 ? sizeof(Elf64_Ehdr) : sizeof(Elf32_Ehdr);
	if (size < ehsize) {
		pr_debug("truncated ELF header (%llu bytes)", (unsigned long long)size);
		return -EINVAL;
	}
	return 0;
}

/* True when [off, off + len) lies inside a file of the given size, without overflow. */
static bool in_file(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

static uint32_t read_u32(const unsigned char *p, bool msb)
{
	if (msb)
		return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
	return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static uint64_t align_up(uint64_t v, uint64_t align)
{
	return (v + align - 1) & ~(align - 1);
}

/* Scans a block of notes for NT_GNU_BUILD_ID owned by "GNU". Offsets are relative to the
 * block start, which the file aligns to the block's alignment (4, or 8 for 8-aligned
 * note segments such as .note.gnu.property). A note whose sizes overrun the block ends
 * the scan: the rest cannot be framed. Returns true when the build ID was stored. */
static bool scan_notes(const unsigned char *p, size_t n, uint64_t align, bool msb,
		       struct lupe_elfinfo *out)
{
	uint64_t pos = 0, name_off, desc_off, next;
	uint32_t namesz, descsz, type;

	while (n - pos >= 12) {
		namesz = read_u32(p + pos, msb);
		descsz = read_u32(p + pos + 4, msb);
		type = read_u32(p + pos + 8, msb);
		name_off = pos + 12;
		/* 32-bit sizes in 64-bit arithmetic: none of these sums can overflow. */
		desc_off = align_up(name_off + namesz, align);
		if (name_off + namesz > n || desc_off > n || descsz > n - desc_off) {
			pr_debug("malformed note at +%llu (namesz %u, descsz %u, block %zu)",
				 (unsigned long long)pos, namesz, descsz, n);
			return false;
		}
		if (type == NT_GNU_BUILD_ID && namesz == sizeof(ELF_NOTE_GNU) &&
		    memcmp(p + name_off, ELF_NOTE_GNU, sizeof(ELF_NOTE_GNU)) == 0) {
			if (descsz > 0 && descsz <= LUPE_BUILD_ID_MAX) {
				memcpy(out->build_id, p + desc_off, descsz);
				out->build_id_len = descsz;
				return true;
			}
			pr_debug("build ID of %u bytes ignored", descsz);
		}
		next = align_up(desc_off + descsz, align);
		if (next >= n)
			break;
		pos = next;
	}
	return false;
}

/* Reads [off, off + len) of the file through libelf (no copy when mmapped), after
 * checking it lies in the file. NULL when it does not or libelf fails. */
static const unsigned char *file_bytes(Elf *elf, uint64_t size, uint64_t off, uint64_t len)
{
	Elf_Data *d;

	if (len == 0 || !in_file(off, len, size))
		return NULL;
	d = elf_getdata_rawchunk(elf, (int64_t)off, len, ELF_T_BYTE);
	if (!d || !d->d_buf || d->d_size != len)
		return NULL;
	return d->d_buf;
}

/* .gnu_debuglink: a NUL-terminated file name, zero padding to a 4-byte boundary, then the
 * CRC-32 of the debug file in the file's byte order. */
static void parse_debuglink(const unsigned char *p, size_t n, bool msb,
			    struct lupe_elfinfo *out)
{
	size_t len = strnlen((const char *)p, n);
	uint64_t crc_off = align_up((uint64_t)len + 1, 4);

	if (len == n || len == 0 || crc_off + 4 > n) {
		pr_debug("malformed .gnu_debuglink (%zu bytes)", n);
		return;
	}
	if (len >= sizeof(out->debuglink) || memchr(p, '/', len)) {
		/* Tools store a base name; a path could walk out of the debug directories. */
		pr_debug(".gnu_debuglink name is too long or not a plain file name");
		return;
	}
	memcpy(out->debuglink, p, len);
	out->debuglink[len] = '\0';
	out->debuglink_crc = read_u32(p + crc_off, msb);
}

/* Section pass: build-ID notes (when no PT_NOTE had one) and .gnu_debuglink. Sections are
 * optional (stripped files, the vDSO read from memory), so nothing here is an error. */
static void scan_sections(Elf *elf, uint64_t size, bool msb, struct lupe_elfinfo *out)
{
	const unsigned char *p;
	Elf_Scn *scn = NULL;
	const char *name;
	size_t shstrndx;
	GElf_Shdr sh;

	if (elf_getshdrstrndx(elf, &shstrndx) != 0)
		shstrndx = SHN_UNDEF;
	while ((scn = elf_nextscn(elf, scn)) != NULL) {
		if (!gelf_getshdr(scn, &sh))
			continue;
		if (sh.sh_type == SHT_NOBITS || (sh.sh_flags & SHF_COMPRESSED))
			continue;
		if (sh.sh_type == SHT_NOTE && out->build_id_len == 0) {
			p = file_bytes(elf, size, sh.sh_offset, sh.sh_size);
			if (p)
				scan_notes(p, sh.sh_size, sh.sh_addralign == 8 ? 8 : 4, msb, out);
			continue;
		}
		if (shstrndx == SHN_UNDEF || sh.sh_type != SHT_PROGBITS || out->debuglink[0])
			continue;
		name = elf_strptr(elf, shstrndx, sh.sh_name);
		if (!name || strcmp(name, ".gnu_debuglink") != 0)
			continue;
		p = file_bytes(elf, size, sh.sh_offset, sh.sh_size);
		if (p)
			parse_debuglink(p, sh.sh_size, msb, out);
	}
}

/* More than PN_XNUM - 1 program headers: the count is in section 0's sh_info. */
static bool phnum_extended(Elf *elf, size_t *phnum)
{
	Elf_Scn *scn0 = elf_getscn(elf, 0);
	GElf_Shdr sh;

	if (!scn0 || !gelf_getshdr(scn0, &sh))
		return false;
	*phnum = sh.sh_info;
	return true;
}

/* Fills out from an open descriptor over a file of size bytes whose identification
 * check_ident() accepted. */
static int parse(Elf *elf, uint64_t size, struct lupe_elfinfo *out)
{
	size_t phnum, phentsize, i;
	const unsigned char *p;
	const char *ident;
	GElf_Ehdr eh;
	GElf_Phdr ph;
	bool msb;

	if (elf_kind(elf) != ELF_K_ELF || !gelf_getehdr(elf, &eh) ||
	    !(ident = elf_getident(elf, NULL))) {
		pr_debug("unreadable ELF header: %s", elf_errmsg(-1));
		return -EINVAL;
	}
	msb = ident[EI_DATA] == ELFDATA2MSB;
	if (eh.e_type != ET_EXEC && eh.e_type != ET_DYN) {
		pr_debug("ELF type %u is neither ET_EXEC nor ET_DYN", eh.e_type);
		return -ENOEXEC;
	}
	/* The count from the header itself: elf_getphdrnum() quietly clamps it to what fits
	 * in the file, which would hide a truncated table. */
	phnum = eh.e_phnum;
	if (phnum == PN_XNUM && !phnum_extended(elf, &phnum)) {
		pr_debug("bad extended program header count");
		return -EINVAL;
	}
	if (phnum == 0) {
		pr_debug("no program headers");
		return -ENOEXEC;
	}
	phentsize = gelf_fsize(elf, ELF_T_PHDR, 1, EV_CURRENT);
	if (eh.e_phentsize != phentsize || eh.e_phoff > size ||
	    phnum > (size - eh.e_phoff) / phentsize) {
		pr_debug("program header table (%zu x %u at %llu) outside the file (%llu bytes)",
			 phnum, eh.e_phentsize, (unsigned long long)eh.e_phoff,
			 (unsigned long long)size);
		return -EINVAL;
	}

	out->type = eh.e_type;
	out->machine = eh.e_machine;
	for (i = 0; i < phnum; i++) {
		if (!gelf_getphdr(elf, (int)i, &ph)) {
			pr_debug("program header %zu: %s", i, elf_errmsg(-1));
			return -EINVAL;
		}
		if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X))
			continue;
		if (!in_file(ph.p_offset, ph.p_filesz, size)) {
			pr_debug("executable segment %zu (%llu bytes at %llu) past the end of the file",
				 i, (unsigned long long)ph.p_filesz, (unsigned long long)ph.p_offset);
			return -EINVAL;
		}
		if (out->nxsegs == LUPE_ELF_MAX_XSEGS) {
			out->xsegs_dropped++;
			continue;
		}
		out->xsegs[out->nxsegs++] = (struct lupe_elf_segment){
			.vaddr = ph.p_vaddr,
			.offset = ph.p_offset,
			.filesz = ph.p_filesz,
			.memsz = ph.p_memsz,
		};
	}
	if (out->nxsegs == 0) {
		pr_debug("no executable PT_LOAD segment");
		return -ENOEXEC;
	}
	if (out->xsegs_dropped)
		pr_debug("%zu executable segments past the first %d ignored", out->xsegs_dropped,
			 LUPE_ELF_MAX_XSEGS);

	/* Build ID: PT_NOTE segments first (they survive section stripping and are all the
	 * vDSO has at run time), then SHT_NOTE sections. */
	for (i = 0; i < phnum && out->build_id_len == 0; i++) {
		if (!gelf_getphdr(elf, (int)i, &ph) || ph.p_type != PT_NOTE)
			continue;
		p = file_bytes(elf, size, ph.p_offset, ph.p_filesz);
		if (p)
			scan_notes(p, ph.p_filesz, ph.p_align == 8 ? 8 : 4, msb, out);
		else
			pr_debug("note segment %zu outside the file", i);
	}
	scan_sections(elf, size, msb, out);
	return 0;
}

int lupe_elfinfo_from_fd(int fd, struct lupe_elfinfo *out)
{
	unsigned char ident[EI_NIDENT];
	Elf *elf = NULL;
	struct stat st;
	ssize_t n;
	int err;

	if (!out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	if (fd < 0)
		return -EINVAL;
	err = libelf_ready();
	if (err)
		return err;
	if (fstat(fd, &st) != 0) {
		pr_debug("fstat: %s", lupe_errstr(errno));
		return -EIO;
	}
	if (!S_ISREG(st.st_mode))
		return -ENOEXEC;
	/* pread leaves the descriptor's offset alone, as promised. */
	do
		n = pread(fd, ident, sizeof(ident), 0);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		pr_debug("read: %s", lupe_errstr(errno));
		return -EIO;
	}
	err = check_ident(ident, (size_t)n, (uint64_t)st.st_size);
	if (err)
		goto out;
	elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
	if (!elf) {
		pr_debug("elf_begin: %s", elf_errmsg(-1));
		err = -EINVAL;
		goto out;
	}
	err = parse(elf, (uint64_t)st.st_size, out);
out:
	elf_end(elf);
	if (err)
		memset(out, 0, sizeof(*out));
	return err;
}

int lupe_elfinfo_from_mem(const void *buf, size_t len, struct lupe_elfinfo *out)
{
	Elf *elf = NULL;
	int err;

	if (!out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	if (!buf && len)
		return -EINVAL;
	err = libelf_ready();
	if (err)
		return err;
	err = check_ident(buf, len, len);
	if (err)
		goto out;
	/* elf_memory takes a char * but, opened this way (ELF_C_READ inside libelf), only
	 * reads the image: conversions are made into copies. */
	elf = elf_memory((char *)buf, len);
	if (!elf) {
		pr_debug("elf_memory: %s", elf_errmsg(-1));
		err = -EINVAL;
		goto out;
	}
	err = parse(elf, len, out);
out:
	elf_end(elf);
	if (err)
		memset(out, 0, sizeof(*out));
	return err;
}

int lupe_elfinfo_offset_to_vaddr(const struct lupe_elfinfo *e, uint64_t file_offset,
				 uint64_t *vaddr)
{
	uint64_t page_mask = ~((uint64_t)sysconf(_SC_PAGESIZE) - 1);
	const struct lupe_elf_segment *s;
	size_t i;

	if (!e || !vaddr)
		return -EINVAL;
	for (i = 0; i < e->nxsegs && i < LUPE_ELF_MAX_XSEGS; i++) {
		s = &e->xsegs[i];
		/* A segment with no file bytes (a separate debug file's) maps nothing. */
		if (s->filesz == 0 || file_offset < (s->offset & page_mask) ||
		    (file_offset >= s->offset && file_offset - s->offset >= s->filesz))
			continue;
		*vaddr = s->vaddr - (s->offset - file_offset);
		return 0;
	}
	return -ENOENT;
}

char *lupe_elfinfo_build_id_hex(const struct lupe_elfinfo *e, char *buf, size_t buflen)
{
	static const char digits[] = "0123456789abcdef";
	size_t n, i;

	if (!buf || buflen == 0)
		return buf;
	n = e ? e->build_id_len : 0;
	if (n > LUPE_BUILD_ID_MAX)
		n = LUPE_BUILD_ID_MAX;
	if (n > (buflen - 1) / 2)
		n = (buflen - 1) / 2;
	for (i = 0; i < n; i++) {
		buf[2 * i] = digits[e->build_id[i] >> 4];
		buf[2 * i + 1] = digits[e->build_id[i] & 0xf];
	}
	buf[2 * n] = '\0';
	return buf;
}
