/* Shared with runtime/: how a stack delta says to unwind one frame on x86-64, and the
 * reasons an unwind stops with an error frame. Fixed-width types only. */
#ifndef LUPE_BPF_UNWIND_H
#define LUPE_BPF_UNWIND_H

/* cfa_opcode: where the canonical frame address (the caller's SP) is. */
#define LUPE_CFA_CMD      0  /* no CFA: cfa_param is a LUPE_CMD_* */
#define LUPE_CFA_SP       1  /* CFA = rsp + cfa_param */
#define LUPE_CFA_FP       2  /* CFA = rbp + cfa_param */
#define LUPE_CFA_DEREF_SP 3  /* CFA = *(rsp + cfa_param) (+ fp_param when fp_opcode is
			      * LUPE_FP_CFA_DEREF_ADD); GCC's realigned-stack expression */
#define LUPE_CFA_DEREF_FP 4  /* CFA = *(rbp + cfa_param), likewise */

/* cfa_param when cfa_opcode == LUPE_CFA_CMD. */
#define LUPE_CMD_INVALID  0  /* no unwind information covers this address */
#define LUPE_CMD_STOP     1  /* the outermost frame (_start, thread entry, RA undefined) */
#define LUPE_CMD_PLT      2  /* a PLT stub: CFA = rsp + 8, or + 16 past the push */
#define LUPE_CMD_SIGNAL   3  /* a signal trampoline: registers come from the rt_sigframe */

/* fp_opcode: how to recover the caller's rbp. The return address is always at CFA - 8. */
#define LUPE_FP_SAME      0  /* rbp is unchanged (not saved by this frame) */
#define LUPE_FP_AT_CFA    1  /* rbp was saved at CFA + fp_param */
#define LUPE_FP_UNDEFINED 2  /* rbp is unknown past this frame */

/* Why a native unwind ended early: the error frame's addr_or_line. */
#define LUPE_UNWIND_ERR_NO_MAPPING  4001 /* the PC lies in no known executable mapping */
#define LUPE_UNWIND_ERR_NO_DELTA    4002 /* the file has no delta covering the PC */
#define LUPE_UNWIND_ERR_INVALID     4003 /* the delta says the PC has no valid rule */
#define LUPE_UNWIND_ERR_READ_FAULT  4004 /* reading the stack (CFA, RA, FP) failed */
#define LUPE_UNWIND_ERR_TOO_DEEP    4005 /* the frame limit was reached */
#define LUPE_UNWIND_ERR_ZERO_PC     4006 /* the return address read was 0 */
#define LUPE_UNWIND_ERR_FP_CHAIN    4007 /* frame-pointer fallback: chain broken */

#endif
