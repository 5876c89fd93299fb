/* Call-frame information to stack deltas. Three passes:
 *   1. collect: every FDE's address range, instructions and CIE, from .eh_frame_hdr's
 *      table or a linear walk of .eh_frame, then .debug_frame. CIEs are parsed once each
 *      (a table keyed by section offset) and keep the rule state their initial
 *      instructions leave, which DW_CFA_restore returns to.
 *   2. order: drop empty FDEs, FDEs outside executable segments and FDEs starting inside
 *      an earlier one (so .debug_frame copies of .eh_frame FDEs go), sort by address.
 *   3. run: the CFA program of each FDE, tracking only what the BPF unwinder uses (the
 *      CFA, rbp and the return-address column), emitting a row at every advance; rows
 *      equal to the previous one merge on the fly.
 * All reads go through a bounds-checked reader over the section bytes: any read past the
 * end of an entry marks it bad instead of reading on. */
#define LUPE_LOG_PREFIX "ehframe: "
#include "ehframe.h"
#include "log.h"
#include "unwind.h"

#include <errno.h>
#include <gelf.h>
#include <libelf.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* DWARF constants (DWARF 5 §7.24, LSB 5.0 §10.5 for the pointer encodings). */
enum {
	PE_absptr = 0x00, PE_uleb128 = 0x01, PE_udata2 = 0x02, PE_udata4 = 0x03,
	PE_udata8 = 0x04, PE_sleb128 = 0x09, PE_sdata2 = 0x0a, PE_sdata4 = 0x0b,
	PE_sdata8 = 0x0c,
	PE_pcrel = 0x10, PE_textrel = 0x20, PE_datarel = 0x30, PE_funcrel = 0x40,
	PE_aligned = 0x50, PE_indirect = 0x80, PE_omit = 0xff,
};

enum {
	CFA_nop = 0x00, CFA_set_loc = 0x01, CFA_advance_loc1 = 0x02,
	CFA_advance_loc2 = 0x03, CFA_advance_loc4 = 0x04, CFA_offset_extended = 0x05,
	CFA_restore_extended = 0x06, CFA_undefined = 0x07, CFA_same_value = 0x08,
	CFA_register = 0x09, CFA_remember_state = 0x0a, CFA_restore_state = 0x0b,
	CFA_def_cfa = 0x0c, CFA_def_cfa_register = 0x0d, CFA_def_cfa_offset = 0x0e,
	CFA_def_cfa_expression = 0x0f, CFA_expression = 0x10, CFA_offset_extended_sf = 0x11,
	CFA_def_cfa_sf = 0x12, CFA_def_cfa_offset_sf = 0x13, CFA_val_offset = 0x14,
	CFA_val_offset_sf = 0x15, CFA_val_expression = 0x16,
	CFA_MIPS_advance_loc8 = 0x1d, CFA_GNU_args_size = 0x2e,
	CFA_GNU_negative_offset_extended = 0x2f,
	CFA_advance_loc = 0x40, CFA_offset = 0x80, CFA_restore = 0xc0,
};

enum {
	OP_deref = 0x06, OP_and = 0x1a, OP_plus = 0x22, OP_shl = 0x24, OP_ge = 0x2a,
	OP_lit3 = 0x33, OP_lit10 = 0x3a, OP_lit11 = 0x3b, OP_lit15 = 0x3f,
	OP_breg6 = 0x76, OP_breg7 = 0x77, OP_breg16 = 0x80,
};

/* x86-64 DWARF register numbers (psABI §3.6.2). */
#define REG_RBP 6
#define REG_RSP 7

/* ---- bounded reader ------------------------------------------------------------------ */

struct rd {
	const uint8_t *p, *end;
	const uint8_t *base;   /* section start: base[0] is at address vaddr */
	uint64_t vaddr;
	bool bad;
};

static bool rd_need(struct rd *r, size_t n)
{
	if (r->bad || (size_t)(r->end - r->p) < n) {
		r->bad = true;
		return false;
	}
	return true;
}

static uint64_t rd_le(struct rd *r, size_t n)
{
	uint64_t v = 0;
	size_t i;

	if (!rd_need(r, n))
		return 0;
	for (i = 0; i < n; i++)
		v |= (uint64_t)r->p[i] << (8 * i);
	r->p += n;
	return v;
}

static uint8_t rd_u8(struct rd *r)
{
	return (uint8_t)rd_le(r, 1);
}

/* LEB128: at most 10 bytes carry bits; longer runs of continuation bytes are malformed.
 * *shift and *last tell the signed reader where the value ended and its last byte. */
static uint64_t rd_leb(struct rd *r, unsigned *shift, uint8_t *last)
{
	uint64_t v = 0;
	uint8_t b;

	*shift = 0;
	do {
		if (!rd_need(r, 1) || *shift >= 70) {
			r->bad = true;
			*last = 0;
			return 0;
		}
		b = *r->p++;
		if (*shift < 64)
			v |= (uint64_t)(b & 0x7f) << *shift;
		*shift += 7;
	} while (b & 0x80);
	*last = b;
	return v;
}

static uint64_t rd_uleb(struct rd *r)
{
	unsigned shift;
	uint8_t last;

	return rd_leb(r, &shift, &last);
}

static int64_t rd_sleb(struct rd *r)
{
	unsigned shift;
	uint8_t last;
	uint64_t v = rd_leb(r, &shift, &last);

	if (r->bad)
		return 0;
	if (shift < 64 && (last & 0x40))
		v |= ~(uint64_t)0 << shift;
	return (int64_t)v;
}

static void rd_skip(struct rd *r, uint64_t n)
{
	if (r->bad || (uint64_t)(r->end - r->p) < n) {
		r->bad = true;
		return;
	}
	r->p += n;
}

/* What an encoded pointer may be relative to, besides its own address. */
struct ptr_base {
	uint64_t datarel;      /* .eh_frame_hdr's address */
	bool has_datarel;
	uint8_t addr_size;     /* of DW_EH_PE_absptr */
};

/* Reads a pointer in encoding enc. An indirect pointer names the address holding the
 * value: only the address is returned, and only when allow_indirect (personality
 * routines, which are skipped anyway). Returns false (r->bad set) when unsupported. */
static bool rd_ptr(struct rd *r, uint8_t enc, const struct ptr_base *b, bool allow_indirect,
		   uint64_t *out)
{
	uint64_t here, v;

	if (enc == PE_omit || ((enc & PE_indirect) && !allow_indirect))
		goto bad;
	if ((enc & 0x70) == PE_aligned) {
		uint64_t a = b->addr_size, pos = r->vaddr + (uint64_t)(r->p - r->base);

		rd_skip(r, (a - pos % a) % a);
	}
	here = r->vaddr + (uint64_t)(r->p - r->base);
	switch (enc & 0x0f) {
	case PE_absptr: v = rd_le(r, b->addr_size); break;
	case PE_uleb128: v = rd_uleb(r); break;
	case PE_udata2: v = rd_le(r, 2); break;
	case PE_udata4: v = rd_le(r, 4); break;
	case PE_udata8: v = rd_le(r, 8); break;
	case PE_sleb128: v = (uint64_t)rd_sleb(r); break;
	case PE_sdata2: v = (uint64_t)(int64_t)(int16_t)rd_le(r, 2); break;
	case PE_sdata4: v = (uint64_t)(int64_t)(int32_t)rd_le(r, 4); break;
	case PE_sdata8: v = rd_le(r, 8); break;
	default: goto bad;
	}
	switch (enc & 0x70) {
	case 0:
	case PE_aligned:
		break;
	case PE_pcrel:
		v += here;
		break;
	case PE_datarel:
		if (!b->has_datarel)
			goto bad;
		v += b->datarel;
		break;
	default: /* textrel, funcrel: nothing on x86-64 Linux uses them */
		goto bad;
	}
	*out = v;
	return !r->bad;
bad:
	r->bad = true;
	return false;
}

/* Size-only form of an encoding (for pc_range, which is never relative). */
static bool rd_ptr_value(struct rd *r, uint8_t enc, const struct ptr_base *b, uint64_t *out)
{
	return rd_ptr(r, enc & 0x0f, b, false, out);
}

/* ---- the rule state ------------------------------------------------------------------ */

enum { RULE_SAME, RULE_UNDEF, RULE_OFFSET, RULE_OTHER };
struct rule {
	uint8_t kind;
	int64_t off;           /* RULE_OFFSET: saved at CFA + off */
};

enum { CFA_NONE, CFA_REG, CFA_PLT, CFA_DEREF, CFA_BAD };
struct cfa {
	uint8_t kind;
	bool expr;             /* defined by an expression (even one read as reg + off) */
	uint64_t reg;          /* CFA_REG, CFA_DEREF */
	int64_t off;
};

struct state {
	struct cfa cfa;
	struct rule fp, ra;
};

/* ---- sections, CIEs, FDEs ------------------------------------------------------------ */

enum { SRC_EH, SRC_DEBUG };

struct sec {
	const uint8_t *data;
	size_t len;
	uint64_t vaddr;
	uint8_t src;
	struct ptr_base pb;
};

struct cie {
	uint64_t key;          /* section offset * 2 + source */
	bool ok;
	bool signal;           /* 'S' */
	bool has_z;
	uint8_t fde_enc;
	uint64_t code_align;
	int64_t data_align;
	uint64_t ra_reg;
	struct ptr_base pb;    /* the section's, with this CIE's address size */
	struct state init;     /* after the initial instructions */
};

struct fde {
	uint64_t begin, end;
	const uint8_t *ins, *ins_end;
	uint64_t vaddr_ins;    /* address of ins[0] (DW_CFA_set_loc may be pc-relative) */
	uint32_t cie;          /* index into ctx.cies */
	uint32_t order;        /* discovery order: .eh_frame before .debug_frame */
};

struct seg {
	uint64_t vaddr, memsz;
};

struct ctx {
	struct lupe_ehframe_stats *st;
	struct cie *cies;
	size_t ncies, cies_cap;
	uint32_t *cie_slots;   /* open addressing: index + 1, 0 = empty */
	size_t nslots;
	struct fde *fdes;
	size_t nfdes, fdes_cap;
	const struct seg *xsegs;  /* NULL: no segment check */
	size_t nxsegs;
	struct lupe_stack_delta *out;
	size_t nout, out_cap;
	size_t usable;         /* FDEs whose program ran to the end */
	bool nomem;
};

/* One entry (CIE or FDE) framed by its length. */
struct entry {
	uint64_t off, end;     /* section offsets: start of the length field, past the entry */
	uint64_t id_off, id;
	bool is_cie;
	const uint8_t *body;   /* after the ID field */
};

/* Frames the entry at off. Returns 1 for a terminator (length 0), 0, or -EINVAL when the
 * length runs past the section. */
static int read_entry(const struct sec *s, uint64_t off, struct entry *e)
{
	struct rd r = { s->data + off, s->data + s->len, s->data, s->vaddr, false };
	uint64_t len, idsz = 4;

	if (off >= s->len)
		return -EINVAL;
	len = rd_le(&r, 4);
	if (r.bad)
		return -EINVAL;
	if (len == 0)
		return 1;
	if (len >= 0xfffffff0u) {
		if (len != 0xffffffffu)
			return -EINVAL;  /* reserved values */
		len = rd_le(&r, 8);
		idsz = 8;
	}
	if (r.bad || len > (uint64_t)(r.end - r.p) || len < idsz)
		return -EINVAL;
	e->off = off;
	e->end = (uint64_t)(r.p - s->data) + len;
	e->id_off = (uint64_t)(r.p - s->data);
	e->id = rd_le(&r, idsz);
	if (s->src == SRC_EH)
		e->is_cie = e->id == 0;
	else
		e->is_cie = e->id == (idsz == 4 ? 0xffffffffu : ~(uint64_t)0);
	e->body = r.p;
	return 0;
}

static int run_program(struct ctx *c, const struct cie *cie, const struct fde *f,
		       struct rd *r, struct state *st, uint64_t *flags);

static uint64_t hash_key(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return k;
}

static int cie_table_grow(struct ctx *c)
{
	size_t n = c->nslots ? c->nslots * 2 : 64, i, j;
	uint32_t *slots = calloc(n, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (i = 0; i < c->ncies; i++) {
		j = hash_key(c->cies[i].key) & (n - 1);
		while (slots[j])
			j = (j + 1) & (n - 1);
		slots[j] = (uint32_t)i + 1;
	}
	free(c->cie_slots);
	c->cie_slots = slots;
	c->nslots = n;
	return 0;
}

/* Parses the CIE at e (already framed) into *cie. Returns true when it is usable. */
static bool parse_cie(struct ctx *c, const struct sec *s, const struct entry *e, struct cie *cie)
{
	struct rd r = { e->body, s->data + e->end, s->data, s->vaddr, false };
	const char *aug;
	size_t auglen, i;
	uint64_t flags = 0, skip;
	uint8_t version, enc;
	struct rd ar;

	cie->pb = s->pb;
	cie->fde_enc = PE_absptr;
	version = rd_u8(&r);
	if (r.bad || !(version == 1 || version == 3 || version == 4))
		return false;
	aug = (const char *)r.p;
	auglen = strnlen(aug, (size_t)(r.end - r.p));
	if (auglen == (size_t)(r.end - r.p))
		return false;
	r.p += auglen + 1;
	if (version == 4) {
		uint8_t asz = rd_u8(&r), segsz = rd_u8(&r);

		if (r.bad || (asz != 4 && asz != 8) || segsz != 0)
			return false;
		cie->pb.addr_size = asz;
	}
	/* "eh": old GCC put a pointer-sized EH data pointer here. */
	if (auglen >= 2 && aug[0] == 'e' && aug[1] == 'h')
		rd_skip(&r, cie->pb.addr_size);
	cie->code_align = rd_uleb(&r);
	cie->data_align = rd_sleb(&r);
	cie->ra_reg = version == 1 ? rd_u8(&r) : rd_uleb(&r);
	if (r.bad || cie->code_align == 0 || cie->ra_reg == REG_RBP || cie->ra_reg == REG_RSP)
		return false;
	cie->has_z = auglen > 0 && aug[0] == 'z';
	if (cie->has_z) {
		skip = rd_uleb(&r);
		if (r.bad || skip > (uint64_t)(r.end - r.p))
			return false;
		ar = (struct rd){ r.p, r.p + skip, s->data, s->vaddr, false };
		r.p += skip;
		for (i = 1; i < auglen && !ar.bad; i++) {
			uint64_t ignored;

			switch (aug[i]) {
			case 'R':
				cie->fde_enc = rd_u8(&ar);
				break;
			case 'L':
				rd_u8(&ar);  /* LSDA encoding: the FDE's augmentation data is skipped whole */
				break;
			case 'P':
				enc = rd_u8(&ar);
				rd_ptr(&ar, enc, &cie->pb, true, &ignored);
				break;
			case 'S':
				cie->signal = true;
				break;
			case 'B':  /* AArch64 BTI, G: MTE: no data */
			case 'G':
				break;
			default:
				/* Unknown: the length prefix lets the rest be skipped. */
				i = auglen;
				break;
			}
		}
		if (ar.bad)
			return false;
	} else if (auglen > 0 && !(auglen == 2 && aug[0] == 'e' && aug[1] == 'h')) {
		return false;  /* without 'z', an unknown augmentation cannot be framed */
	}
	/* The initial instructions leave the state FDEs start from. */
	cie->init = (struct state){ .cfa = { .kind = CFA_NONE } };
	cie->init.fp.kind = RULE_SAME;
	cie->init.ra.kind = RULE_SAME;
	if (run_program(c, cie, NULL, &r, &cie->init, &flags) != 0)
		return false;
	return true;
}

/* The CIE at section offset off, parsed on first use. Returns its index, -EINVAL when no
 * usable CIE is there, -ENOMEM. A malformed CIE is counted once and remembered as bad. */
static long cie_get(struct ctx *c, const struct sec *s, uint64_t off)
{
	uint64_t key = off * 2 + s->src;
	struct entry e;
	struct cie *cie;
	size_t j;

	if (c->nslots) {
		j = hash_key(key) & (c->nslots - 1);
		while (c->cie_slots[j]) {
			cie = &c->cies[c->cie_slots[j] - 1];
			if (cie->key == key)
				return cie->ok ? (long)(c->cie_slots[j] - 1) : -EINVAL;
			j = (j + 1) & (c->nslots - 1);
		}
	}
	/* Not a CIE at all (an FDE, garbage): the pointing FDE is bad, nothing is cached. */
	if (read_entry(s, off, &e) != 0 || !e.is_cie)
		return -EINVAL;
	if (c->ncies + 1 > c->nslots / 2 && cie_table_grow(c) != 0)
		return -ENOMEM;
	if (c->ncies == c->cies_cap) {
		size_t n = c->cies_cap ? c->cies_cap * 2 : 16;
		struct cie *nc = realloc(c->cies, n * sizeof(*nc));

		if (!nc)
			return -ENOMEM;
		c->cies = nc;
		c->cies_cap = n;
	}
	cie = &c->cies[c->ncies];
	memset(cie, 0, sizeof(*cie));
	cie->key = key;
	cie->ok = parse_cie(c, s, &e, cie);
	if (cie->ok)
		c->st->cies++;
	else
		c->st->bad_cies++;
	j = hash_key(key) & (c->nslots - 1);
	while (c->cie_slots[j])
		j = (j + 1) & (c->nslots - 1);
	c->cie_slots[j] = (uint32_t)c->ncies + 1;
	c->ncies++;
	return cie->ok ? (long)(c->ncies - 1) : -EINVAL;
}

/* Parses the FDE framed by e. Returns 0 (*f filled), -EINVAL (bad FDE), -ENOMEM. */
static int parse_fde(struct ctx *c, const struct sec *s, const struct entry *e, struct fde *f)
{
	struct rd r = { e->body, s->data + e->end, s->data, s->vaddr, false };
	const struct cie *cie;
	uint64_t cie_off, begin, range, auglen;
	long ci;

	if (s->src == SRC_EH) {
		/* The pointer is the distance back from the ID field to the CIE. */
		if (e->id > e->id_off)
			return -EINVAL;
		cie_off = e->id_off - e->id;
	} else {
		cie_off = e->id;
	}
	if (cie_off == e->off || cie_off >= s->len)
		return -EINVAL;
	ci = cie_get(c, s, cie_off);
	if (ci < 0)
		return (int)ci;
	cie = &c->cies[ci];
	if (!rd_ptr(&r, cie->fde_enc, &cie->pb, false, &begin) ||
	    !rd_ptr_value(&r, cie->fde_enc, &cie->pb, &range))
		return -EINVAL;
	if (cie->pb.addr_size == 4 && (cie->fde_enc & 0x0f) == PE_absptr) {
		begin &= 0xffffffffu;
		range &= 0xffffffffu;
	}
	if (cie->has_z) {
		auglen = rd_uleb(&r);
		rd_skip(&r, auglen);
	}
	if (r.bad || range > UINT64_MAX - begin)
		return -EINVAL;
	*f = (struct fde){
		.begin = begin,
		.end = begin + range,
		.ins = r.p,
		.ins_end = r.end,
		.vaddr_ins = s->vaddr + (uint64_t)(r.p - s->data),
		.cie = (uint32_t)ci,
	};
	return 0;
}

static int fde_push(struct ctx *c, const struct fde *f)
{
	if (c->nfdes == c->fdes_cap) {
		size_t n = c->fdes_cap ? c->fdes_cap * 2 : 256;
		struct fde *nf;

		if (n > UINT32_MAX)
			return -ENOMEM;
		nf = realloc(c->fdes, n * sizeof(*nf));
		if (!nf)
			return -ENOMEM;
		c->fdes = nf;
		c->fdes_cap = n;
	}
	c->fdes[c->nfdes] = *f;
	c->fdes[c->nfdes].order = (uint32_t)c->nfdes;
	c->nfdes++;
	c->st->fdes++;
	return 0;
}

/* Walks a section entry by entry. A length running past the end stops the walk (nothing
 * after it can be framed); everything else bad is skipped. */
static int walk_section(struct ctx *c, const struct sec *s)
{
	uint64_t off = 0;
	struct entry e;
	struct fde f;
	int rc;

	while (off < s->len) {
		rc = read_entry(s, off, &e);
		if (rc == 1) {
			/* .eh_frame's terminator; .debug_frame has none, so there it is padding. */
			if (s->src == SRC_EH)
				break;
			off += 4;
			continue;
		}
		if (rc < 0) {
			pr_debug("entry at +%llu runs past the end of its section",
				 (unsigned long long)off);
			c->st->bad_fdes++;
			break;
		}
		if (e.is_cie) {
			if (cie_get(c, s, off) == -ENOMEM)
				return -ENOMEM;
		} else {
			rc = parse_fde(c, s, &e, &f);
			if (rc == -ENOMEM)
				return rc;
			if (rc == 0) {
				rc = fde_push(c, &f);
				if (rc)
					return rc;
			} else {
				c->st->bad_fdes++;
			}
		}
		off = e.end;
	}
	return 0;
}

/* .eh_frame_hdr: version 1, then the encodings of eh_frame_ptr, fde_count and the table.
 * Only the common table encoding (datarel sdata4, sorted) is used; anything odd, or a
 * table entry that does not match the FDE it points at, makes the caller walk .eh_frame
 * instead. Returns 0, -EINVAL (unusable), -ENOMEM. */
static int walk_hdr(struct ctx *c, const struct sec *eh, const uint8_t *hdr, size_t hlen,
		    uint64_t hdr_vaddr)
{
	struct ptr_base pb = { hdr_vaddr, true, 8 };
	struct rd r = { hdr, hdr + hlen, hdr, hdr_vaddr, false };
	uint64_t ehp, count, i, loc, addr, prev = 0, off;
	uint8_t ver, ptr_enc, cnt_enc, tab_enc;
	size_t first = c->nfdes;
	struct entry e;
	struct fde f;
	int rc;

	ver = rd_u8(&r);
	ptr_enc = rd_u8(&r);
	cnt_enc = rd_u8(&r);
	tab_enc = rd_u8(&r);
	if (r.bad || ver != 1 || tab_enc != (PE_datarel | PE_sdata4) || cnt_enc == PE_omit)
		return -EINVAL;
	if (!rd_ptr(&r, ptr_enc, &pb, false, &ehp) || ehp != eh->vaddr ||
	    !rd_ptr(&r, cnt_enc, &pb, false, &count))
		return -EINVAL;
	if (count > (uint64_t)(r.end - r.p) / 8)
		return -EINVAL;
	for (i = 0; i < count; i++) {
		rc = -EINVAL;
		loc = rd_le(&r, 4);
		addr = rd_le(&r, 4);
		loc = (uint64_t)(int64_t)(int32_t)loc + hdr_vaddr;
		addr = (uint64_t)(int64_t)(int32_t)addr + hdr_vaddr;
		if (r.bad || (i && loc < prev) || addr < eh->vaddr)
			goto fail;
		prev = loc;
		off = addr - eh->vaddr;
		if (off >= eh->len || read_entry(eh, off, &e) != 0 || e.is_cie)
			goto fail;
		rc = parse_fde(c, eh, &e, &f);
		if (rc || f.begin != loc) {
			if (rc == 0)
				rc = -EINVAL;
			goto fail;
		}
		rc = fde_push(c, &f);
		if (rc)
			goto fail;
	}
	return 0;
fail:
	/* Forget what the table gave: the linear walk finds it all again. */
	c->st->fdes -= c->nfdes - first;
	c->nfdes = first;
	return rc;
}

/* ---- the CFA program ----------------------------------------------------------------- */

/* Flags an FDE's rows raise, counted once per FDE. */
#define F_UNSUPPORTED 0x1u
#define F_STOP        0x2u
#define F_PLT         0x4u

/* Recognises the CFA expressions compilers and linkers emit on x86-64. */
static void classify_cfa_expr(const uint8_t *p, uint64_t n, struct cfa *out, uint64_t *exprs)
{
	static const uint8_t plt_tail[] = { OP_lit15, OP_and, 0, OP_ge, OP_lit3, OP_shl, OP_plus };
	struct rd r = { p, p + n, p, 0, false };
	int64_t off;
	uint8_t op;
	size_t i;

	op = rd_u8(&r);
	if (op == OP_breg7 || op == OP_breg6) {
		off = rd_sleb(&r);
		if (r.bad)
			goto unsupported;
		if (r.p == r.end) {                       /* breg N: a plain register rule */
			*out = (struct cfa){ CFA_REG, true, op == OP_breg7 ? REG_RSP : REG_RBP, off };
			return;
		}
		if (op == OP_breg7 && off == 8 && rd_u8(&r) == OP_breg16 && rd_sleb(&r) == 0 &&
		    !r.bad && (size_t)(r.end - r.p) == sizeof(plt_tail)) {
			/* The PLT: rsp + 8, + 8 more past the push at offset 11 (10 for IBT). */
			for (i = 0; i < sizeof(plt_tail); i++) {
				if (i == 2 ? (r.p[i] != OP_lit11 && r.p[i] != OP_lit10)
					   : r.p[i] != plt_tail[i])
					goto unsupported;
			}
			*out = (struct cfa){ CFA_PLT, true, 0, 0 };
			return;
		}
		r = (struct rd){ p, p + n, p, 0, false };
		rd_u8(&r);
		rd_sleb(&r);
		if (rd_u8(&r) == OP_deref && r.p == r.end && !r.bad) {
			/* GCC's realigned stack: the CFA was saved at reg + off. */
			*out = (struct cfa){ CFA_DEREF, true, op == OP_breg7 ? REG_RSP : REG_RBP, off };
			return;
		}
	}
unsupported:
	(*exprs)++;
	*out = (struct cfa){ CFA_BAD, true, 0, 0 };
}

static bool fits_s32(int64_t v)
{
	return v >= INT32_MIN && v <= INT32_MAX;
}

/* The row for a state. Commands carry no rbp rule, so equal commands compare equal. */
static void state_to_delta(const struct state *s, uint64_t addr, struct lupe_stack_delta *d,
			   uint64_t *flags)
{
	memset(d, 0, sizeof(*d));
	d->address = addr;
	d->cfa_opcode = LUPE_CFA_CMD;
	d->cfa_param = LUPE_CMD_INVALID;
	if (s->ra.kind == RULE_UNDEF) {
		d->cfa_param = LUPE_CMD_STOP;
		*flags |= F_STOP;
		return;
	}
	switch (s->cfa.kind) {
	case CFA_PLT:
		d->cfa_param = LUPE_CMD_PLT;
		*flags |= F_PLT;
		return;
	case CFA_REG:
		/* The return address sits at CFA - 8, so an rsp-based CFA below rsp + 8 has
		 * none on the stack. */
		if (s->cfa.reg == REG_RSP && s->cfa.off >= 8 && fits_s32(s->cfa.off)) {
			d->cfa_opcode = LUPE_CFA_SP;
		} else if (s->cfa.reg == REG_RBP && fits_s32(s->cfa.off)) {
			d->cfa_opcode = LUPE_CFA_FP;
		} else {
			*flags |= F_UNSUPPORTED;
			return;
		}
		break;
	case CFA_DEREF:
		if (!fits_s32(s->cfa.off)) {
			*flags |= F_UNSUPPORTED;
			return;
		}
		d->cfa_opcode = s->cfa.reg == REG_RSP ? LUPE_CFA_DEREF_SP : LUPE_CFA_DEREF_FP;
		break;
	case CFA_BAD:   /* counted where it was defined */
	default:        /* no CFA rule at all */
		return;
	}
	if (s->ra.kind != RULE_OFFSET || s->ra.off != -8) {
		*flags |= F_UNSUPPORTED;
		d->cfa_opcode = LUPE_CFA_CMD;
		return;
	}
	d->cfa_param = (int32_t)s->cfa.off;
	switch (s->fp.kind) {
	case RULE_SAME:
		d->fp_opcode = LUPE_FP_SAME;
		break;
	case RULE_OFFSET:
		if (fits_s32(s->fp.off)) {
			d->fp_opcode = LUPE_FP_AT_CFA;
			d->fp_param = (int32_t)s->fp.off;
			break;
		}
		/* fall through */
	case RULE_OTHER:
		*flags |= F_UNSUPPORTED;
		/* fall through */
	default:
		d->fp_opcode = LUPE_FP_UNDEFINED;
		break;
	}
}

static bool delta_same_rule(const struct lupe_stack_delta *a, const struct lupe_stack_delta *b)
{
	return a->cfa_opcode == b->cfa_opcode && a->fp_opcode == b->fp_opcode &&
	       a->flags == b->flags && a->cfa_param == b->cfa_param && a->fp_param == b->fp_param;
}

/* Appends a row. A row at the address of the last replaces it; a row equal to the last
 * is dropped (the last already covers it). Rows come in address order. */
static void emit(struct ctx *c, const struct lupe_stack_delta *d)
{
	struct lupe_stack_delta *last;

	c->st->deltas_raw++;
	if (c->nout) {
		last = &c->out[c->nout - 1];
		if (last->address == d->address) {
			*last = *d;
			if (c->nout > 1 && delta_same_rule(&c->out[c->nout - 2], last))
				c->nout--;
			return;
		}
		if (delta_same_rule(last, d))
			return;
	}
	if (c->nout == c->out_cap) {
		size_t n = c->out_cap ? c->out_cap * 2 : 1024;
		struct lupe_stack_delta *no = realloc(c->out, n * sizeof(*no));

		if (!no) {
			c->nomem = true;
			return;
		}
		c->out = no;
		c->out_cap = n;
	}
	c->out[c->nout++] = *d;
}

static void emit_cmd(struct ctx *c, uint64_t addr, int cmd)
{
	struct lupe_stack_delta d = { .address = addr, .cfa_opcode = LUPE_CFA_CMD,
				      .cfa_param = cmd };

	emit(c, &d);
}

static void emit_state(struct ctx *c, uint64_t addr, const struct state *s, uint64_t *flags)
{
	struct lupe_stack_delta d;

	state_to_delta(s, addr, &d, flags);
	emit(c, &d);
}

/* An offset operand times a factor (the CIE's data alignment, or 1). Out-of-range values
 * become OFF_HUGE, which no rule can encode (it fails the 32-bit checks), so hostile input
 * gives an unsupported rule rather than an overflow. */
#define OFF_HUGE INT64_MAX

static int64_t factored(int64_t v, int64_t factor)
{
	int64_t out;

	if (__builtin_mul_overflow(v, factor, &out) || out == INT64_MIN)
		return OFF_HUGE;
	return out;
}

/* The same for an unsigned (ULEB128) operand. */
static int64_t ufactored(uint64_t v, int64_t factor)
{
	return v > INT64_MAX ? OFF_HUGE : factored((int64_t)v, factor);
}

/* The rule a register operand refers to, or NULL for registers nobody tracks. */
static struct rule *reg_rule(struct state *st, const struct cie *cie, uint64_t reg)
{
	if (reg == REG_RBP)
		return &st->fp;
	if (reg == cie->ra_reg)
		return &st->ra;
	return NULL;
}

static void set_rule(struct rule *ru, uint8_t kind, int64_t off)
{
	if (ru) {
		ru->kind = kind;
		ru->off = off;
	}
}

/* Runs a CFA program: the CIE's initial instructions (f NULL: no rows, no advances) or an
 * FDE's (a row at each advance inside the FDE). Returns 0, or -EINVAL for a malformed
 * program (a bad operand, an unknown opcode, a remember stack under- or overflow). */
static int run_program(struct ctx *c, const struct cie *cie, const struct fde *f,
		       struct rd *r, struct state *st, uint64_t *flags)
{
	struct state stack[LUPE_EHFRAME_REMEMBER_MAX];
	unsigned depth = 0;
	uint64_t loc = f ? f->begin : 0, delta = 0, reg, len;
	int64_t off;
	uint8_t op;

	while (r->p < r->end && !r->bad) {
		op = rd_u8(r);
		switch (op & 0xc0) {
		case CFA_advance_loc:
			delta = op & 0x3f;
			goto advance;
		case CFA_offset:
			off = ufactored(rd_uleb(r), cie->data_align);
			set_rule(reg_rule(st, cie, op & 0x3f), RULE_OFFSET, off);
			continue;
		case CFA_restore:
			reg = op & 0x3f;
			goto restore;
		}
		switch (op) {
		case CFA_nop:
		case CFA_GNU_args_size:
			if (op == CFA_GNU_args_size)
				rd_uleb(r);
			continue;
		case CFA_set_loc: {
			uint64_t to;

			/* The reader knows the operand's address (run_fde), for pcrel. */
			if (!f || !rd_ptr(r, cie->fde_enc, &cie->pb, false, &to) || to < loc)
				return -EINVAL;
			if (loc < f->end)
				emit_state(c, loc, st, flags);
			loc = to;
			if (loc >= f->end)
				return 0;
			continue;
		}
		case CFA_advance_loc1:
			delta = rd_le(r, 1);
			goto advance;
		case CFA_advance_loc2:
			delta = rd_le(r, 2);
			goto advance;
		case CFA_advance_loc4:
			delta = rd_le(r, 4);
			goto advance;
		case CFA_MIPS_advance_loc8:
			delta = rd_le(r, 8);
			goto advance;
		case CFA_offset_extended:
			reg = rd_uleb(r);
			off = ufactored(rd_uleb(r), cie->data_align);
			set_rule(reg_rule(st, cie, reg), RULE_OFFSET, off);
			continue;
		case CFA_offset_extended_sf:
			reg = rd_uleb(r);
			off = factored(rd_sleb(r), cie->data_align);
			set_rule(reg_rule(st, cie, reg), RULE_OFFSET, off);
			continue;
		case CFA_GNU_negative_offset_extended:
			reg = rd_uleb(r);
			off = ufactored(rd_uleb(r), cie->data_align);
			off = off == OFF_HUGE ? off : -off;
			set_rule(reg_rule(st, cie, reg), RULE_OFFSET, off);
			continue;
		case CFA_restore_extended:
			reg = rd_uleb(r);
			goto restore;
		case CFA_undefined:
			set_rule(reg_rule(st, cie, rd_uleb(r)), RULE_UNDEF, 0);
			continue;
		case CFA_same_value:
			set_rule(reg_rule(st, cie, rd_uleb(r)), RULE_SAME, 0);
			continue;
		case CFA_register:
		case CFA_val_offset:
		case CFA_val_offset_sf:
			reg = rd_uleb(r);
			if (op == CFA_val_offset_sf)
				rd_sleb(r);
			else
				rd_uleb(r);
			set_rule(reg_rule(st, cie, reg), RULE_OTHER, 0);
			continue;
		case CFA_expression:
		case CFA_val_expression:
			reg = rd_uleb(r);
			len = rd_uleb(r);
			rd_skip(r, len);
			set_rule(reg_rule(st, cie, reg), RULE_OTHER, 0);
			continue;
		case CFA_remember_state:
			if (depth == LUPE_EHFRAME_REMEMBER_MAX) {
				pr_debug("remember_state nested deeper than %d",
					 LUPE_EHFRAME_REMEMBER_MAX);
				return -EINVAL;
			}
			stack[depth++] = *st;
			continue;
		case CFA_restore_state:
			if (depth == 0)
				return -EINVAL;
			*st = stack[--depth];
			continue;
		case CFA_def_cfa:
			st->cfa.reg = rd_uleb(r);
			st->cfa.off = ufactored(rd_uleb(r), 1);
			st->cfa.kind = CFA_REG;
			st->cfa.expr = false;
			continue;
		case CFA_def_cfa_sf:
			st->cfa.reg = rd_uleb(r);
			st->cfa.off = factored(rd_sleb(r), cie->data_align);
			st->cfa.kind = CFA_REG;
			st->cfa.expr = false;
			continue;
		case CFA_def_cfa_register:
			/* Keeps the offset, as the offset ops keep the register. After an
			 * expression there is no offset to keep: DWARF calls that invalid. */
			st->cfa.reg = rd_uleb(r);
			st->cfa.kind = st->cfa.expr ? CFA_BAD : CFA_REG;
			continue;
		case CFA_def_cfa_offset:
		case CFA_def_cfa_offset_sf:
			if (op == CFA_def_cfa_offset)
				st->cfa.off = ufactored(rd_uleb(r), 1);
			else
				st->cfa.off = factored(rd_sleb(r), cie->data_align);
			if (st->cfa.expr || st->cfa.kind == CFA_NONE)
				st->cfa.kind = CFA_BAD;
			continue;
		case CFA_def_cfa_expression:
			len = rd_uleb(r);
			if (!rd_need(r, len))
				return -EINVAL;
			classify_cfa_expr(r->p, len, &st->cfa, &c->st->unsupported_exprs);
			r->p += len;
			continue;
		default:
			pr_debug("unknown DW_CFA opcode 0x%02x", op);
			return -EINVAL;
		}
advance:
		if (!f)
			return -EINVAL;  /* a CIE describes no addresses */
		if (r->bad)
			break;
		if (loc < f->end)
			emit_state(c, loc, st, flags);
		if (delta > (UINT64_MAX - loc) / cie->code_align)
			return 0;  /* past any address: the rest cannot apply */
		loc += delta * cie->code_align;
		if (loc >= f->end)
			return 0;  /* the rest describes addresses past the FDE */
		continue;
restore:
		if (reg == REG_RBP)
			st->fp = cie->init.fp;
		else if (reg == cie->ra_reg)
			st->ra = cie->init.ra;
		continue;
	}
	if (r->bad)
		return -EINVAL;
	if (f && loc < f->end)
		emit_state(c, loc, st, flags);
	return 0;
}

/* Rows of one FDE, then an INVALID row at its end unless the next FDE starts there. */
static void run_fde(struct ctx *c, const struct fde *f, uint64_t next_begin, bool last)
{
	const struct cie *cie = &c->cies[f->cie];
	struct rd r = { f->ins, f->ins_end, f->ins, f->vaddr_ins, false };
	size_t mark = c->nout;
	struct state st;
	uint64_t flags = 0;

	if (cie->signal) {
		c->st->signal_fdes++;
		emit_cmd(c, f->begin, LUPE_CMD_SIGNAL);
		c->usable++;
	} else {
		st = cie->init;
		if (run_program(c, cie, f, &r, &st, &flags) != 0) {
			c->st->bad_fdes++;
			c->nout = mark;
			emit_cmd(c, f->begin, LUPE_CMD_INVALID);
			flags = 0;
		} else {
			c->usable++;
		}
	}
	if (flags & F_UNSUPPORTED)
		c->st->unsupported_rules++;
	if (flags & F_STOP)
		c->st->stop_fdes++;
	if (flags & F_PLT)
		c->st->plt_fdes++;
	if (last || next_begin > f->end)
		emit_cmd(c, f->end, LUPE_CMD_INVALID);
}

static int fde_cmp(const void *a, const void *b)
{
	const struct fde *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

static bool in_xseg(const struct ctx *c, const struct fde *f)
{
	size_t i;

	for (i = 0; i < c->nxsegs; i++) {
		const struct seg *s = &c->xsegs[i];

		if (f->begin >= s->vaddr && f->end <= s->vaddr + s->memsz)
			return true;
	}
	return false;
}

/* Orders the collected FDEs and runs them into c->out. */
static int build(struct ctx *c)
{
	size_t i, n = 0;
	bool sorted = true;
	uint64_t end = 0;

	for (i = 0; i < c->nfdes; i++) {
		const struct fde *f = &c->fdes[i];

		if (f->begin == f->end) {
			c->st->empty_fdes++;
			continue;
		}
		if (c->xsegs && !in_xseg(c, f)) {
			c->st->outside_fdes++;
			continue;
		}
		if (n && fde_cmp(&c->fdes[n - 1], f) > 0)
			sorted = false;
		c->fdes[n++] = *f;
	}
	if (!sorted)
		qsort(c->fdes, n, sizeof(*c->fdes), fde_cmp);
	/* Overlaps: the earlier-starting FDE wins; at the same start, .eh_frame does. */
	c->nfdes = n;
	for (i = n = 0; i < c->nfdes; i++) {
		if (n && c->fdes[i].begin < end) {
			c->st->overlapping_fdes++;
			continue;
		}
		end = c->fdes[i].end;
		c->fdes[n++] = c->fdes[i];
	}
	c->nfdes = n;
	for (i = 0; i < n && !c->nomem; i++)
		run_fde(c, &c->fdes[i], i + 1 < n ? c->fdes[i + 1].begin : 0, i + 1 == n);
	return c->nomem ? -ENOMEM : 0;
}

static void ctx_free(struct ctx *c)
{
	free(c->cies);
	free(c->cie_slots);
	free(c->fdes);
	free(c->out);
}

/* Builds the rows and hands them over; rc is what collection returned. No FDE at all, or
 * none describing executable code, is -ENOENT; FDEs of which not one could be used is
 * -EINVAL. */
static int finish(struct ctx *c, int rc, struct lupe_interval_data *out)
{
	if (rc == 0)
		rc = build(c);
	if (rc == 0 && (c->usable == 0 || c->nout == 0)) {
		if (c->nfdes == 0 && c->st->bad_fdes == 0)
			rc = -ENOENT;  /* none, or all empty or outside the code */
		else
			rc = -EINVAL;
	}
	if (rc == 0) {
		struct lupe_stack_delta *shrunk = realloc(c->out, c->nout * sizeof(*shrunk));

		out->deltas = shrunk ? shrunk : c->out;
		out->count = c->nout;
		c->st->deltas = c->nout;
		c->out = NULL;
	}
	ctx_free(c);
	return rc;
}

/* ---- ELF ----------------------------------------------------------------------------- */

static pthread_once_t libelf_once = PTHREAD_ONCE_INIT;
static bool libelf_ok;

static void libelf_init(void)
{
	libelf_ok = elf_version(EV_CURRENT) != EV_NONE;
}

#define MAX_SEGS 64

struct image {
	const uint8_t *data;
	size_t len;
	bool writable;         /* libelf may decompress sections in place (private mapping) */
};

static bool in_image(const struct image *im, uint64_t off, uint64_t len)
{
	return off <= im->len && len <= im->len - off;
}

/* Section bytes, or NULL. Compressed sections are inflated by libelf (owned by it). */
static const uint8_t *section_bytes(const struct image *im, Elf_Scn *scn, GElf_Shdr *sh,
				    size_t *len)
{
	Elf_Data *d;

	if (sh->sh_type == SHT_NOBITS || sh->sh_size == 0)
		return NULL;
	if (sh->sh_flags & SHF_COMPRESSED) {
		if (!im->writable || elf_compress(scn, 0, 0) < 0 || !(d = elf_getdata(scn, NULL)) ||
		    !d->d_buf) {
			pr_debug("compressed section left out: %s", elf_errmsg(-1));
			return NULL;
		}
		*len = d->d_size;
		return d->d_buf;
	}
	if (!in_image(im, sh->sh_offset, sh->sh_size))
		return NULL;
	*len = sh->sh_size;
	return im->data + sh->sh_offset;
}

static int extract_elf(const struct image *im, const struct lupe_ehframe_opts *opts,
		       struct lupe_interval_data *out, struct lupe_ehframe_stats *st)
{
	struct sec eh = { .src = SRC_EH }, dbg = { .src = SRC_DEBUG };
	const uint8_t *hdr = NULL, *id = im->data;
	struct seg xsegs[MAX_SEGS];
	struct ctx c = { .st = st };
	bool have_eh = false, have_dbg = false, no_hdr = false, no_eh = false, no_dbg = false;
	bool eh_named = false;
	uint64_t hdr_vaddr = 0;
	size_t hlen = 0, shstrndx, phnum = 0, i, nloads = 0;
	struct load { uint64_t vaddr, off, filesz; } loads[MAX_SEGS];
	GElf_Phdr ph, gnu_eh = { 0 };
	Elf_Scn *scn = NULL;
	Elf *elf = NULL;
	GElf_Ehdr eh_hdr;
	GElf_Shdr sh;
	int rc = 0;

	if (opts) {
		no_hdr = opts->sz > offsetof(struct lupe_ehframe_opts, no_eh_frame_hdr) &&
			 opts->no_eh_frame_hdr;
		no_eh = opts->sz > offsetof(struct lupe_ehframe_opts, no_eh_frame) &&
			opts->no_eh_frame;
		no_dbg = opts->sz > offsetof(struct lupe_ehframe_opts, no_debug_frame) &&
			 opts->no_debug_frame;
	}
	if (im->len < SELFMAG || memcmp(id, ELFMAG, SELFMAG) != 0)
		return -ENOEXEC;
	if (im->len < sizeof(Elf64_Ehdr))
		return -EINVAL;
	if (id[EI_CLASS] != ELFCLASS64 || id[EI_DATA] != ELFDATA2LSB)
		return -ENOEXEC;
	pthread_once(&libelf_once, libelf_init);
	if (!libelf_ok)
		return -EIO;
	/* libelf only reads the image, except to inflate compressed sections, which it is
	 * asked to do only on a private writable mapping. */
	elf = elf_memory((char *)im->data, im->len);
	if (!elf || elf_kind(elf) != ELF_K_ELF || !gelf_getehdr(elf, &eh_hdr)) {
		pr_debug("unreadable ELF header: %s", elf_errmsg(-1));
		rc = -EINVAL;
		goto out;
	}
	if (eh_hdr.e_machine != EM_X86_64 ||
	    (eh_hdr.e_type != ET_EXEC && eh_hdr.e_type != ET_DYN)) {
		rc = -ENOEXEC;
		goto out;
	}

	if (elf_getphdrnum(elf, &phnum) != 0)
		phnum = 0;
	c.xsegs = xsegs;
	for (i = 0; i < phnum; i++) {
		if (!gelf_getphdr(elf, (int)i, &ph))
			continue;
		if (ph.p_type == PT_GNU_EH_FRAME)
			gnu_eh = ph;
		if (ph.p_type != PT_LOAD)
			continue;
		if (nloads < MAX_SEGS)
			loads[nloads++] = (struct load){ ph.p_vaddr, ph.p_offset, ph.p_filesz };
		if ((ph.p_flags & PF_X) && c.nxsegs < MAX_SEGS && ph.p_memsz &&
		    ph.p_vaddr <= UINT64_MAX - ph.p_memsz)
			xsegs[c.nxsegs++] = (struct seg){ ph.p_vaddr, ph.p_memsz };
	}
	if (nloads == 0)
		c.xsegs = NULL;  /* no program headers: nothing to check against */

	if (elf_getshdrstrndx(elf, &shstrndx) != 0)
		shstrndx = SHN_UNDEF;
	while (shstrndx != SHN_UNDEF && (scn = elf_nextscn(elf, scn)) != NULL) {
		const char *name;
		const uint8_t *p;
		size_t len = 0;

		if (!gelf_getshdr(scn, &sh) || !(name = elf_strptr(elf, shstrndx, sh.sh_name)))
			continue;
		if (strcmp(name, ".eh_frame") == 0 && !no_eh && !have_eh) {
			eh_named = true;
			if ((p = section_bytes(im, scn, &sh, &len))) {
				eh.data = p;
				eh.len = len;
				eh.vaddr = sh.sh_addr;
				have_eh = true;
			}
		} else if (strcmp(name, ".eh_frame_hdr") == 0 && !no_eh && !hdr) {
			if ((p = section_bytes(im, scn, &sh, &len))) {
				hdr = p;
				hlen = len;
				hdr_vaddr = sh.sh_addr;
			}
		} else if (strcmp(name, ".debug_frame") == 0 && !no_dbg && !have_dbg) {
			if ((p = section_bytes(im, scn, &sh, &len))) {
				dbg.data = p;
				dbg.len = len;
				have_dbg = true;
			}
		}
	}

	/* No .eh_frame section (section headers stripped): PT_GNU_EH_FRAME points at
	 * .eh_frame_hdr, whose eh_frame_ptr points at .eh_frame, which runs to its
	 * terminator within its PT_LOAD. Not when .eh_frame exists but has no bytes (a
	 * separate debug file: its program headers describe bytes it does not hold). */
	if (!have_eh && !eh_named && !no_eh && gnu_eh.p_type == PT_GNU_EH_FRAME &&
	    in_image(im, gnu_eh.p_offset, gnu_eh.p_filesz) && gnu_eh.p_filesz >= 4) {
		struct ptr_base pb = { gnu_eh.p_vaddr, true, 8 };
		const uint8_t *h = im->data + gnu_eh.p_offset;
		struct rd r = { h + 4, h + gnu_eh.p_filesz, h, gnu_eh.p_vaddr, false };
		uint64_t ehp;

		if (h[0] == 1 && rd_ptr(&r, h[1], &pb, false, &ehp)) {
			for (i = 0; i < nloads; i++) {
				if (ehp < loads[i].vaddr || ehp - loads[i].vaddr >= loads[i].filesz ||
				    !in_image(im, loads[i].off, loads[i].filesz))
					continue;
				eh.data = im->data + loads[i].off + (ehp - loads[i].vaddr);
				eh.len = loads[i].filesz - (ehp - loads[i].vaddr);
				eh.vaddr = ehp;
				have_eh = true;
				hdr = h;
				hlen = gnu_eh.p_filesz;
				hdr_vaddr = gnu_eh.p_vaddr;
				st->sources |= LUPE_EHFRAME_SRC_PT_GNU_EH;
				break;
			}
		}
	}

	if (have_eh) {
		eh.pb = (struct ptr_base){ hdr_vaddr, hdr != NULL, 8 };
		st->sources |= LUPE_EHFRAME_SRC_EH_FRAME;
		rc = -EINVAL;
		if (hdr && !no_hdr) {
			rc = walk_hdr(&c, &eh, hdr, hlen, hdr_vaddr);
			if (rc == 0)
				st->sources |= LUPE_EHFRAME_SRC_HDR_TABLE;
			else if (rc == -EINVAL)
				st->hdr_fallbacks++;
		}
		if (rc == -EINVAL)
			rc = walk_section(&c, &eh);
	}
	if (rc == 0 && have_dbg) {
		dbg.pb = (struct ptr_base){ 0, false, 8 };
		st->sources |= LUPE_EHFRAME_SRC_DEBUG_FRAME;
		rc = walk_section(&c, &dbg);
	}
	if (!have_eh && !have_dbg) {
		ctx_free(&c);
		rc = -ENOENT;
		goto out;
	}
	rc = finish(&c, rc, out);
out:
	elf_end(elf);
	return rc;
}

static void stats_reset(struct lupe_ehframe_stats *st)
{
	memset(st, 0, sizeof(*st));
}

int lupe_ehframe_extract_mem(const void *buf, size_t len, const struct lupe_ehframe_opts *opts,
			     struct lupe_interval_data *out, struct lupe_ehframe_stats *st)
{
	struct lupe_ehframe_stats local;
	struct image im = { buf, len, false };

	if (!st)
		st = &local;
	stats_reset(st);
	if (!out || (!buf && len))
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	return extract_elf(&im, opts, out, st);
}

int lupe_ehframe_extract_fd(int fd, const struct lupe_ehframe_opts *opts,
			    struct lupe_interval_data *out, struct lupe_ehframe_stats *st)
{
	struct lupe_ehframe_stats local;
	struct image im = { NULL, 0, true };
	struct stat sb;
	void *map;
	int rc;

	if (!st)
		st = &local;
	stats_reset(st);
	if (!out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	if (fd < 0)
		return -EINVAL;
	if (fstat(fd, &sb) != 0)
		return -EIO;
	if (!S_ISREG(sb.st_mode) || sb.st_size < SELFMAG)
		return -ENOEXEC;
	if ((uint64_t)sb.st_size > SIZE_MAX)
		return -EINVAL;
	/* Private and writable: pages libelf writes (inflating a compressed .debug_frame
	 * rewrites its section header) are copied, the file is never touched. Only the pages
	 * read are loaded. */
	map = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED) {
		pr_debug("mmap: %s", lupe_errstr(errno));
		return -EIO;
	}
	im.data = map;
	im.len = (size_t)sb.st_size;
	rc = extract_elf(&im, opts, out, st);
	munmap(map, (size_t)sb.st_size);
	return rc;
}

int lupe_ehframe_extract_section(const void *sec, size_t len, uint64_t vaddr, bool debug_frame,
				 struct lupe_interval_data *out, struct lupe_ehframe_stats *st)
{
	struct lupe_ehframe_stats local;
	struct ctx c;
	struct sec s = {
		.data = sec,
		.len = len,
		.vaddr = vaddr,
		.src = debug_frame ? SRC_DEBUG : SRC_EH,
		.pb = { 0, false, 8 },
	};
	int rc;

	if (!st)
		st = &local;
	stats_reset(st);
	if (!out || (!sec && len))
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	c = (struct ctx){ .st = st };
	st->sources = debug_frame ? LUPE_EHFRAME_SRC_DEBUG_FRAME : LUPE_EHFRAME_SRC_EH_FRAME;
	rc = walk_section(&c, &s);
	return finish(&c, rc, out);
}

/* ---- lookups and text ---------------------------------------------------------------- */

const struct lupe_stack_delta *lupe_ehframe_find(const struct lupe_interval_data *d,
						 uint64_t addr)
{
	size_t lo = 0, hi, mid;

	if (!d || !d->count || addr < d->deltas[0].address)
		return NULL;
	hi = d->count;
	/* The last delta at or below addr: deltas[lo].address <= addr < deltas[hi]. */
	while (hi - lo > 1) {
		mid = lo + (hi - lo) / 2;
		if (d->deltas[mid].address <= addr)
			lo = mid;
		else
			hi = mid;
	}
	return &d->deltas[lo];
}

bool lupe_ehframe_is_cmd(const struct lupe_stack_delta *d, const char **cmd_name)
{
	static const char *const names[] = {
		[LUPE_CMD_INVALID] = "invalid",
		[LUPE_CMD_STOP] = "stop",
		[LUPE_CMD_PLT] = "plt",
		[LUPE_CMD_SIGNAL] = "signal",
	};

	if (d->cfa_opcode != LUPE_CFA_CMD)
		return false;
	if (cmd_name)
		*cmd_name = d->cfa_param >= 0 && d->cfa_param < (int32_t)(sizeof(names) / sizeof(names[0]))
				    ? names[d->cfa_param] : "unknown";
	return true;
}

char *lupe_ehframe_format_cfa(const struct lupe_stack_delta *d, char *buf, size_t len)
{
	const char *cmd;

	if (!len)
		return buf;
	if (lupe_ehframe_is_cmd(d, &cmd)) {
		snprintf(buf, len, "%s", cmd);
		return buf;
	}
	switch (d->cfa_opcode) {
	case LUPE_CFA_SP: snprintf(buf, len, "rsp%+d", d->cfa_param); break;
	case LUPE_CFA_FP: snprintf(buf, len, "rbp%+d", d->cfa_param); break;
	case LUPE_CFA_DEREF_SP: snprintf(buf, len, "*(rsp%+d)", d->cfa_param); break;
	case LUPE_CFA_DEREF_FP: snprintf(buf, len, "*(rbp%+d)", d->cfa_param); break;
	default: snprintf(buf, len, "?%u", d->cfa_opcode); break;
	}
	return buf;
}

char *lupe_ehframe_format_fp(const struct lupe_stack_delta *d, char *buf, size_t len)
{
	if (!len)
		return buf;
	if (lupe_ehframe_is_cmd(d, NULL)) {
		buf[0] = '\0';
		return buf;
	}
	switch (d->fp_opcode) {
	case LUPE_FP_SAME: snprintf(buf, len, "same"); break;
	case LUPE_FP_AT_CFA: snprintf(buf, len, "cfa%+d", d->fp_param); break;
	case LUPE_FP_UNDEFINED: snprintf(buf, len, "undefined"); break;
	default: snprintf(buf, len, "?%u", d->fp_opcode); break;
	}
	return buf;
}

/* ---- the process manager's provider -------------------------------------------------- */

struct ehframe_provider {
	struct lupe_stackdelta_provider base;  /* first: the manager holds &base */
	struct lupe_ehframe_stats total;
};

static void stats_add(struct lupe_ehframe_stats *t, const struct lupe_ehframe_stats *s)
{
	t->cies += s->cies;
	t->fdes += s->fdes;
	t->bad_cies += s->bad_cies;
	t->bad_fdes += s->bad_fdes;
	t->unsupported_exprs += s->unsupported_exprs;
	t->unsupported_rules += s->unsupported_rules;
	t->signal_fdes += s->signal_fdes;
	t->stop_fdes += s->stop_fdes;
	t->plt_fdes += s->plt_fdes;
	t->empty_fdes += s->empty_fdes;
	t->outside_fdes += s->outside_fdes;
	t->overlapping_fdes += s->overlapping_fdes;
	t->hdr_fallbacks += s->hdr_fallbacks;
	t->deltas_raw += s->deltas_raw;
	t->deltas += s->deltas;
	t->sources |= s->sources;
}

static int provider_get(struct lupe_stackdelta_provider *p, const struct lupe_exe_info *info,
			struct lupe_interval_data *out)
{
	struct ehframe_provider *ep = (struct ehframe_provider *)p;
	struct lupe_ehframe_stats st;
	int rc;

	if (!info || !out)
		return -EINVAL;
	if (info->fd >= 0)
		rc = lupe_ehframe_extract_fd(info->fd, NULL, out, &st);
	else if (info->image)
		rc = lupe_ehframe_extract_mem(info->image, info->image_len, NULL, out, &st);
	else
		return -EINVAL;
	stats_add(&ep->total, &st);
	if (rc && rc != -ENOENT)
		pr_debug("'%s': %s", info->path ? info->path : "?", lupe_errstr(rc));
	return rc;
}

static void provider_free(struct lupe_stackdelta_provider *p)
{
	free(p);
}

static const struct lupe_stackdelta_provider_ops provider_ops = {
	.get_interval_data = provider_get,
	.free = provider_free,
};

struct lupe_stackdelta_provider *lupe_ehframe_provider_new(void)
{
	struct ehframe_provider *ep = calloc(1, sizeof(*ep));

	if (!ep)
		return NULL;
	ep->base.ops = &provider_ops;
	return &ep->base;
}

void lupe_ehframe_provider_stats(struct lupe_stackdelta_provider *p,
				 struct lupe_ehframe_stats *out)
{
	if (!out)
		return;
	if (!p || p->ops != &provider_ops) {
		memset(out, 0, sizeof(*out));
		return;
	}
	*out = ((struct ehframe_provider *)p)->total;
}
