/*
 * vmm-test-guest: a tiny bare-metal x86_64 guest for the VMM's boot tests.
 *
 * One object, linked once at LOAD_ADDR, shipped in two forms by build.rs:
 *   - an ELF64 whose PT_NOTE carries XEN_ELFNOTE_PHYS32_ENTRY (PVH boot: 32-bit protected mode,
 *     paging off, ebx = hvm_start_info);
 *   - a bzImage: build.rs prepends a setup header (HdrS, protocol 2.15, XLF_KERNEL_64) to the
 *     flat image, so the 64-bit Linux boot protocol enters at LOAD_ADDR + 0x200 (rsi = zero page).
 *
 * Both entries end up in main64, which:
 *   1. prints a banner naming the entry it came through (serial, COM1), then the command line
 *      it found in the zero page / hvm_start_info (after checking their magic);
 *   2. enumerates PCI bus 0 with configuration mechanism #1 (0xcf8/0xcfc) and prints
 *      vendor:device of every present function;
 *   3. counts the enabled processors in the VMM's MP table (scanning only the 1 KiB at 0x9fc00
 *      where the VMM puts the floating pointer: a BIOS-wide scan would cost ~20k instructions);
 *   4. if there are more CPUs, starts them with INIT/SIPI; each AP bumps a counter from its 16-bit
 *      trampoline and halts; the BSP waits for them with a bounded loop and prints how many came;
 *   5. writes EXIT_SUCCESS to the debug-exit port.
 *
 * Constraints (KVM here may be PVM, which instruction-emulates ordinary guests at ~1 MIPS, and
 * each port I/O exit costs ~12 us): a few thousand instructions in all, no SSE/AVX/XSAVE/CX16,
 * every loop bounded. Register use is documented per routine; there is no ABI beyond that.
 *
 * Macros from build.rs: DEBUG_EXIT_PORT, EXIT_SUCCESS, AP_TRAMPOLINE.
 */

#define COM1            0x3f8
#define COM1_LSR        (COM1 + 5)
#define LSR_THRE        0x20
#define PCI_CONFIG_ADDR 0xcf8
#define PCI_CONFIG_DATA 0xcfc
#define MSR_EFER        0xc0000080
#define EFER_LME        0x100
#define CR0_PE          0x1
#define CR0_PG          0x80000000
#define CR4_PAE         0x20
#define LAPIC_BASE      0xfee00000
#define LAPIC_SVR       0xf0
#define LAPIC_ICR_LOW   0x300
#define ICR_INIT_ALL_BUT_SELF 0x000c4500
#define ICR_SIPI_ALL_BUT_SELF 0x000c4600
#define MP_SCAN_START   0x9fc00
#define MP_SCAN_END     0xa0000
#define AP_WAIT_LOOPS   300000
#define CMDLINE_PRINT_MAX 200
#define KERNEL_CS       0x08
#define KERNEL_DS       0x10

/* ---------------------------------------------------------------------------------------- */
    .section .head, "ax"

    /* +0x000: the 32-bit Linux boot protocol entry (esi = boot_params). Same state as PVH. */
    .code32
    .globl startup_32
startup_32:
    mov $kind_linux32, %edi
    xor %ebp, %ebp          /* boot info is a zero page (esi) */
    jmp enter_long_mode

    /* +0x200: the 64-bit Linux boot protocol entry of a bzImage (rsi = boot_params). */
    .org 0x200
    .code64
    .globl startup_64
startup_64:
    lea kind_bzimage(%rip), %rdi
    xor %ebp, %ebp          /* boot info is a zero page (rsi) */
    jmp main64

    /* PVH entry (the ELF note points here): 32-bit protected mode, paging off, ebx = start_info. */
    .code32
    .globl pvh_start
pvh_start:
    mov $kind_pvh, %edi
    mov %ebx, %esi
    mov $1, %ebp            /* boot info is hvm_start_info (esi) */
    /* fall through */

/* edi = banner suffix, esi = boot info, ebp = its kind (preserved). Turns on PAE paging with our tables and long mode, then goes to main64. */
enter_long_mode:
    lgdt gdt_desc
    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $(CR0_PG | CR0_PE), %eax
    mov %eax, %cr0
    ljmp $KERNEL_CS, $1f
    .code64
1:
    mov %edi, %edi          /* upper halves are undefined after the mode switch */
    mov %esi, %esi
    mov %ebp, %ebp
    /* fall through */

/* rdi = banner suffix, rsi = boot info, ebp = 0 (zero page) or 1 (PVH start_info). Common 64-bit code: our own GDT, segments, stack and page tables. */
main64:
    cli
    mov %rsi, boot_info(%rip)
    mov %ebp, boot_proto(%rip)
    lgdt gdt_desc(%rip)
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea stack_top(%rip), %rsp
    lea 2f(%rip), %rax
    push $KERNEL_CS
    push %rax
    lretq
2:
    mov $pml4, %eax
    mov %rax, %cr3
    mov %rdi, %rbx

    lea msg_banner(%rip), %rsi
    call puts
    mov %rbx, %rsi
    call puts
    lea msg_nl(%rip), %rsi
    call puts

    call print_cmdline
    call pci_scan
    call count_cpus         /* eax = CPUs in the MP table */
    mov %eax, %ebx
    lea msg_cpus(%rip), %rsi
    call puts
    mov %ebx, %eax
    call put_dec
    lea msg_nl(%rip), %rsi
    call puts

    cmp $1, %ebx
    jbe 3f
    call start_aps
    mov %eax, %ebx
    lea msg_smp(%rip), %rsi
    call puts
    mov %ebx, %eax
    call put_dec
    lea msg_smp_tail(%rip), %rsi
    call puts
3:
    lea msg_done(%rip), %rsi
    call puts
    mov $EXIT_SUCCESS, %al
    out %al, $DEBUG_EXIT_PORT
    /* The VMM should have stopped us; if it did not, halt for good. */
4:  cli
    hlt
    jmp 4b

/* ---------------------------------------------------------------------------------------- */
    .text
    .code64

/* putc: al = byte. Waits (bounded) for THR empty, then writes. Clobbers: eax, ecx, edx, r8d. */
putc:
    mov %eax, %r8d
    mov $COM1_LSR, %dx
    mov $64, %ecx
1:  in %dx, %al
    test $LSR_THRE, %al
    jnz 2f
    dec %ecx
    jnz 1b
2:  mov %r8d, %eax
    mov $COM1, %dx
    out %al, %dx
    ret

/* puts: rsi = NUL-terminated string. Clobbers: eax, ecx, edx, r8d, rsi. */
puts:
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  ret

/* put_hex: rax = value, ecx = digit count (1..16). Clobbers: eax, ecx, edx, r8-r10. */
put_hex:
    mov %rax, %r9
    mov %ecx, %r10d
1:  dec %r10d
    mov %r9, %rax
    lea (,%r10d,4), %ecx
    shr %cl, %rax
    and $0xf, %eax
    lea hexdigits(%rip), %rdx
    movzbl (%rdx,%rax), %eax
    call putc
    test %r10d, %r10d
    jnz 1b
    ret

/* put_dec: eax = value 0..999. Clobbers: eax, ecx, edx, r8d, r9d, r11d. */
put_dec:
    mov %eax, %r9d
    xor %r11d, %r11d        /* set once a non-zero digit was printed */
    mov $100, %ecx
    xor %edx, %edx
    div %ecx                /* eax = hundreds, edx = rest */
    mov %edx, %r9d
    test %eax, %eax
    jz 1f
    add $'0', %eax
    call putc
    inc %r11d
1:  mov %r9d, %eax
    mov $10, %ecx
    xor %edx, %edx
    div %ecx                /* eax = tens, edx = ones */
    mov %edx, %r9d
    test %r11d, %r11d
    jnz 2f
    test %eax, %eax
    jz 3f
2:  add $'0', %eax
    call putc
3:  mov %r9d, %eax
    add $'0', %eax
    jmp putc

/*
 * print_cmdline: prints "cmdline: <text>" from the boot info (at most CMDLINE_PRINT_MAX bytes),
 * after checking the structure's magic ("HdrS" in the zero page, XEN_HVM_START_MAGIC in PVH).
 * Clobbers: eax, ecx, edx, rsi, r8-r11.
 */
print_cmdline:
    mov boot_info(%rip), %rsi
    cmpl $1, boot_proto(%rip)
    je 1f
    cmpl $0x53726448, 0x202(%rsi)       /* "HdrS" */
    jne 8f
    mov 0x228(%rsi), %r11d              /* hdr.cmd_line_ptr */
    jmp 2f
1:  cmpl $0x336ec578, (%rsi)            /* XEN_HVM_START_MAGIC_VALUE */
    jne 8f
    mov 0x18(%rsi), %r11                /* cmdline_paddr */
2:  lea msg_cmdline(%rip), %rsi
    call puts
    test %r11, %r11
    jz 4f
    mov $CMDLINE_PRINT_MAX, %r10d
3:  movzbl (%r11), %eax
    test %al, %al
    jz 4f
    call putc
    inc %r11
    dec %r10d
    jnz 3b
4:  lea msg_nl(%rip), %rsi
    jmp puts
8:  lea msg_bad_boot_info(%rip), %rsi
    jmp puts

/*
 * pci_scan: prints "pci 00:DD.F VVVV:DDDD" for each present function on bus 0.
 * A function is present when its vendor ID is not 0xffff; functions 1..7 are only probed when
 * function 0 is present and its header type has the multi-function bit.
 * Clobbers: everything but rbx, rsp (saves rbx).
 */
pci_scan:
    push %rbx
    xor %ebx, %ebx          /* ebx = device 0..31 */
pci_dev:
    xor %r12d, %r12d        /* r12d = function 0..7 */
pci_fn:
    mov %ebx, %eax
    shl $11, %eax
    mov %r12d, %ecx
    shl $8, %ecx
    or %ecx, %eax
    or $0x80000000, %eax
    mov %eax, %r13d         /* r13d = config address of register 0 */
    mov $PCI_CONFIG_ADDR, %dx
    out %eax, %dx
    mov $PCI_CONFIG_DATA, %dx
    in %dx, %eax
    cmp $0xffff, %ax
    je pci_absent
    mov %eax, %r14d         /* vendor | device << 16 */

    lea msg_pci(%rip), %rsi
    call puts
    mov %ebx, %eax
    mov $2, %ecx
    call put_hex
    mov $'.', %al
    call putc
    mov %r12d, %eax
    mov $1, %ecx
    call put_hex
    mov $' ', %al
    call putc
    movzwl %r14w, %eax
    mov $4, %ecx
    call put_hex
    mov $':', %al
    call putc
    mov %r14d, %eax
    shr $16, %eax
    mov $4, %ecx
    call put_hex
    lea msg_nl(%rip), %rsi
    call puts

    test %r12d, %r12d
    jnz pci_next_fn
    lea 0xc(%r13d), %eax    /* header type is bits 23:16 of register 0x0c */
    mov $PCI_CONFIG_ADDR, %dx
    out %eax, %dx
    mov $PCI_CONFIG_DATA, %dx
    in %dx, %eax
    test $0x00800000, %eax
    jz pci_next_dev
    jmp pci_next_fn
pci_absent:
    test %r12d, %r12d
    jz pci_next_dev
pci_next_fn:
    inc %r12d
    cmp $8, %r12d
    jb pci_fn
pci_next_dev:
    inc %ebx
    cmp $32, %ebx
    jb pci_dev
    pop %rbx
    ret

/*
 * count_cpus: eax = enabled processor entries in the MP table whose floating pointer lies in
 * [MP_SCAN_START, MP_SCAN_END), or 1 if there is none. Entry count is capped at 256.
 * Clobbers: eax, ecx, edx, rsi.
 */
count_cpus:
    mov $MP_SCAN_START, %esi
1:  cmpl $0x5f504d5f, (%rsi)    /* "_MP_" */
    je 2f
    add $16, %esi
    cmp $MP_SCAN_END, %esi
    jb 1b
    mov $1, %eax
    ret
2:  mov 4(%rsi), %esi           /* physical address of the configuration table */
    test %esi, %esi
    jz 6f
    cmpl $0x504d4350, (%rsi)    /* "PCMP" */
    jne 6f
    movzwl 34(%rsi), %ecx       /* entry count */
    cmp $256, %ecx
    jbe 3f
    mov $256, %ecx
3:  add $44, %esi               /* first entry */
    xor %eax, %eax
    test %ecx, %ecx
    jz 5f
4:  cmpb $0, (%rsi)             /* type 0: processor, 20 bytes; every other type: 8 bytes */
    jne 7f
    testb $1, 3(%rsi)           /* CPU flags: enabled */
    jz 8f
    inc %eax
8:  add $20, %esi
    jmp 9f
7:  add $8, %esi
9:  dec %ecx
    jnz 4b
5:  test %eax, %eax
    jnz 0f
6:  mov $1, %eax
0:  ret

/*
 * start_aps: copies the AP trampoline to AP_TRAMPOLINE, sends INIT and two start-up IPIs to all
 * other CPUs, and waits (bounded by AP_WAIT_LOOPS) until they stop arriving.
 * eax = number of APs that ran the trampoline. Clobbers: eax, ecx, edx, rsi, rdi.
 */
start_aps:
    lea ap_trampoline(%rip), %rsi
    mov $AP_TRAMPOLINE, %edi
    mov $(ap_trampoline_end - ap_trampoline), %ecx
    cld
    rep movsb
    mov $LAPIC_BASE, %edi
    movl $0x1ff, LAPIC_SVR(%rdi)            /* software-enable the local APIC, spurious 0xff */
    movl $ICR_INIT_ALL_BUT_SELF, LAPIC_ICR_LOW(%rdi)
    movl $(ICR_SIPI_ALL_BUT_SELF | (AP_TRAMPOLINE >> 12)), LAPIC_ICR_LOW(%rdi)
    movl $(ICR_SIPI_ALL_BUT_SELF | (AP_TRAMPOLINE >> 12)), LAPIC_ICR_LOW(%rdi)
    mov $AP_WAIT_LOOPS, %ecx
    mov $(AP_TRAMPOLINE + (ap_count - ap_trampoline)), %edx
1:  movzwl (%rdx), %eax
    cmp %ebx, %eax                          /* ebx = CPUs; stop once all APs (ebx - 1) came */
    jae 2f
    lea 1(%rax), %esi
    cmp %ebx, %esi
    je 2f
    pause
    dec %ecx
    jnz 1b
2:  movzwl (%rdx), %eax
    ret

/* The AP start-up trampoline: copied to AP_TRAMPOLINE, entered in real mode at CS:IP = page:0. */
    .code16
ap_trampoline:
    mov %cs, %ax
    mov %ax, %ds
    lock incw (ap_count - ap_trampoline)
1:  cli
    hlt
    jmp 1b
    .balign 2
ap_count:
    .word 0
ap_trampoline_end:
    .code64

/* ---------------------------------------------------------------------------------------- */
    .section .rodata
msg_banner:   .asciz "vmm-test-guest: hello from the "
kind_pvh:     .asciz "PVH entry"
kind_bzimage: .asciz "bzImage 64-bit entry"
kind_linux32: .asciz "Linux 32-bit entry"
msg_nl:       .asciz "\n"
msg_pci:      .asciz "vmm-test-guest: pci 00:"
msg_cpus:     .asciz "vmm-test-guest: cpus in MP table: "
msg_smp:      .asciz "vmm-test-guest: APs started: "
msg_smp_tail: .asciz "\n"
msg_done:     .asciz "vmm-test-guest: done\n"
msg_cmdline:  .asciz "vmm-test-guest: cmdline: "
msg_bad_boot_info: .asciz "vmm-test-guest: bad boot info (no HdrS / PVH magic)\n"
hexdigits:    .ascii "0123456789abcdef"

    .balign 8
gdt:
    .quad 0                         /* null */
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: flat data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .data
    .balign 8
boot_info:  .quad 0
boot_proto: .long 0
    .balign 16
stack:
    .fill 4096, 1, 0
stack_top:

/* Identity map of the low 4 GiB (RAM, the 32-bit PCI hole, the LAPIC) with 2 MiB pages. */
    .section .pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x3
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x3
    .quad pd + 0x1000 + 0x3
    .quad pd + 0x2000 + 0x3
    .quad pd + 0x3000 + 0x3
    .fill 508, 8, 0
pd:
    .set addr, 0
    .rept 2048
    .quad addr | 0x83
    .set addr, addr + 0x200000
    .endr

/* PVH: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen", 32-bit physical entry address. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start

    .section .note.GNU-stack, "", @progbits
