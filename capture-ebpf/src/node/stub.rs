//! A pod's `sk_lookup` stub: eighteen instructions assembled here, not in the object.
//!
//! `sk_lookup` programs have no helper for the network namespace's cookie and a netns link has
//! no attach cookie, so the node's one `sk_lookup` program (loaded with the others, in slot 0
//! of [`SK_LOOKUP_PROGS`]) is told whose lookup it runs for by the stub attached to the pod's
//! namespace: the stub writes the pod's cookie into this CPU's slot of [`LOOKUP_NETNS`] and tail
//! calls into the program, which reads it back. Enrolling a pod then verifies these few
//! instructions (microseconds) instead of the whole program (≈1,100 instructions, ≈6 ms), and
//! parses no object.
//!
//! If the scratch slot cannot be found or the tail call fails (the array's slot is empty), the
//! stub returns `SK_PASS`: the kernel's own lookup decides, as the program decides for a
//! namespace that is not enrolled.
//!
//! [`SK_LOOKUP_PROGS`]: capture_ebpf_common::SK_LOOKUP_PROGS
//! [`LOOKUP_NETNS`]: capture_ebpf_common::LOOKUP_NETNS

use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd};

use aya_obj::generated::{
    BPF_ADD, BPF_ALU64, BPF_CALL, BPF_DW, BPF_EXIT, BPF_IMM, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_MEM,
    BPF_MOV, BPF_PSEUDO_MAP_FD, BPF_ST, BPF_STX, BPF_W, BPF_X, bpf_func_id, bpf_insn,
};

use crate::sys::prog_load_sk_lookup;
use crate::{Error, NetnsCookie};

/// The stub's name, as `bpftool prog` shows it.
pub(crate) const NAME: &str = "capture_sk_stub";

/// `sk_action::SK_PASS`: the kernel goes on with its own lookup.
const SK_PASS: i32 = 1;

/// How many instructions [`instructions`] makes (each `ld_imm64` counts two).
pub(crate) const LEN: usize = 18;

/// Loads (verifies) the stub for the pod `cookie`: `netns` is the node's [`LOOKUP_NETNS`] map,
/// `programs` its [`SK_LOOKUP_PROGS`]. Returns the program's descriptor; the program holds its
/// own references to both maps.
///
/// # Errors
/// [`Error::Stub`] when the kernel refuses the program (with the verifier's last line).
///
/// [`SK_LOOKUP_PROGS`]: capture_ebpf_common::SK_LOOKUP_PROGS
/// [`LOOKUP_NETNS`]: capture_ebpf_common::LOOKUP_NETNS
pub(crate) fn load(
    cookie: NetnsCookie,
    netns: BorrowedFd<'_>,
    programs: BorrowedFd<'_>,
) -> Result<OwnedFd, Error> {
    let insns = instructions(cookie.0, netns.as_raw_fd(), programs.as_raw_fd());
    prog_load_sk_lookup(&insns, c"Apache-2.0", NAME).map_err(|source| Error::Stub {
        step: "BPF_PROG_LOAD (verify the stub)",
        source,
    })
}

/// The stub's instructions, in the order the kernel runs them. `netns_fd` and `programs_fd` are
/// the two maps' descriptors in this process (`BPF_PSEUDO_MAP_FD`: the kernel replaces them by
/// the maps when it loads the program).
fn instructions(cookie: u64, netns_fd: i32, programs_fd: i32) -> [bpf_insn; LEN] {
    const R0: u8 = 0;
    const R1: u8 = 1;
    const R2: u8 = 2;
    const R3: u8 = 3;
    const R6: u8 = 6;
    const R10: u8 = 10;
    let [cookie_lo, cookie_hi] = [cookie as u32 as i32, (cookie >> 32) as u32 as i32];
    [
        // r6 = r1: keep the context (the `bpf_sk_lookup`) in a register calls preserve.
        insn(BPF_ALU64 | BPF_MOV | BPF_X, R6, R1, 0, 0),
        // *(u32 *)(r10 - 4) = 0: the key, slot 0, on the stack.
        insn(BPF_ST | BPF_MEM | BPF_W, R10, 0, -4, 0),
        // r2 = r10 - 4: the key's address.
        insn(BPF_ALU64 | BPF_MOV | BPF_X, R2, R10, 0, 0),
        insn(BPF_ALU64 | BPF_ADD | BPF_K, R2, 0, 0, -4),
        // r1 = &LOOKUP_NETNS (ld_imm64, two instructions: the map by descriptor).
        insn(
            BPF_LD | BPF_IMM | BPF_DW,
            R1,
            BPF_PSEUDO_MAP_FD as u8,
            0,
            netns_fd,
        ),
        insn(0, 0, 0, 0, 0),
        // r0 = bpf_map_lookup_elem(r1, r2): this CPU's slot.
        insn(
            BPF_JMP | BPF_CALL,
            0,
            0,
            0,
            bpf_func_id::BPF_FUNC_map_lookup_elem as i32,
        ),
        // if r0 == 0 goto pass (+8: past the eight instructions below).
        insn(BPF_JMP | BPF_JEQ | BPF_K, R0, 0, 8, 0),
        // r1 = the pod's cookie (ld_imm64: low word, then high word).
        insn(BPF_LD | BPF_IMM | BPF_DW, R1, 0, 0, cookie_lo),
        insn(0, 0, 0, 0, cookie_hi),
        // *(u64 *)(r0 + 0) = r1: the cookie into the slot.
        insn(BPF_STX | BPF_MEM | BPF_DW, R0, R1, 0, 0),
        // r1 = r6: the context again.
        insn(BPF_ALU64 | BPF_MOV | BPF_X, R1, R6, 0, 0),
        // r2 = &SK_LOOKUP_PROGS (ld_imm64, the map by descriptor).
        insn(
            BPF_LD | BPF_IMM | BPF_DW,
            R2,
            BPF_PSEUDO_MAP_FD as u8,
            0,
            programs_fd,
        ),
        insn(0, 0, 0, 0, 0),
        // r3 = 0: the slot.
        insn(BPF_ALU64 | BPF_MOV | BPF_K, R3, 0, 0, 0),
        // bpf_tail_call(r1, r2, r3): does not return when it succeeds.
        insn(
            BPF_JMP | BPF_CALL,
            0,
            0,
            0,
            bpf_func_id::BPF_FUNC_tail_call as i32,
        ),
        // pass: r0 = SK_PASS; exit.
        insn(BPF_ALU64 | BPF_MOV | BPF_K, R0, 0, 0, SK_PASS),
        insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    ]
}

/// One instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u32, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    bpf_insn {
        code: u8::try_from(code).expect("an opcode is one byte"),
        _bitfield_align_1: [],
        _bitfield_1: bpf_insn::new_bitfield_1(dst, src),
        off,
        imm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_split_into_the_two_halves_of_its_ld_imm64() {
        let insns = instructions(0x1122_3344_5566_7788, 5, 6);
        assert_eq!(insns[8].imm as u32, 0x5566_7788);
        assert_eq!(insns[9].imm as u32, 0x1122_3344);
        assert_eq!((insns[4].src_reg(), insns[4].imm), (BPF_PSEUDO_MAP_FD as u8, 5));
        assert_eq!((insns[12].src_reg(), insns[12].imm), (BPF_PSEUDO_MAP_FD as u8, 6));
    }

    #[test]
    fn a_failed_lookup_jumps_to_the_pass_exit() {
        let insns = instructions(1, 5, 6);
        let jeq = &insns[7];
        let target = 7 + 1 + usize::try_from(jeq.off).expect("forward");
        assert_eq!(target, LEN - 2);
        assert_eq!(insns[target].imm, SK_PASS);
        assert_eq!(insns[LEN - 1].code, (BPF_JMP | BPF_EXIT) as u8);
    }
}
