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
 *   5. if the command line has `vmtest.arp=OURS,PEER` (dotted IPv4 addresses): drives the first
 *      modern virtio-net device (1af4:1041) through virtio-pci: broadcasts an ARP request for
 *      PEER from OURS, polls for the reply and prints "net: arp reply from PEER is-at MAC", then
 *      checks that the rx queue's MSI-X message reached the LAPIC (its IRR; interrupts stay
 *      off); any failure prints why and writes EXIT_NET_FAILED;
 *   6. with `vmtest.wait` on the command line, prints "waiting for the host" and halts with
 *      interrupts off until the VMM ends the VM (control-socket tests); else writes
 *      EXIT_SUCCESS to the debug-exit port.
 *
 * Constraints (KVM here may be PVM, which instruction-emulates ordinary guests at ~1 MIPS, and
 * each port I/O exit costs ~12 us): a few thousand instructions in all, no SSE/AVX/XSAVE/CX16,
 * every loop bounded. Register use is documented per routine; there is no ABI beyond that.
 *
 * Macros from build.rs: DEBUG_EXIT_PORT, EXIT_SUCCESS, EXIT_NET_FAILED, AP_TRAMPOLINE.
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
/* virtio-net (step 5): rings and buffers live in RAM above the image, at fixed addresses. */
#define NET_AREA        0x400000            /* needs >= 5 MiB of guest RAM */
#define RXQ_DESC        (NET_AREA)          /* queue 0: desc, avail +0x1000, used +0x2000 */
#define TXQ_DESC        (NET_AREA + 0x3000) /* queue 1: likewise */
#define TX_BUF          (NET_AREA + 0x8000) /* 12-byte virtio_net_hdr + 60-byte frame */
#define RX_BUFS         (NET_AREA + 0x10000)
#define RX_BUF_SIZE     0x800
#define RX_BUF_COUNT    4
#define NET_QUEUE_MAX   16
#define NET_IRQ_VECTOR  0x40                /* the rx queue's MSI-X message */
#define LAPIC_IRR       0x200
#define NET_HDR_LEN     12                  /* virtio_net_hdr with VERSION_1 */
#define TX_LEN          (NET_HDR_LEN + 60)
#define NET_TX_CYCLES   2000000000          /* TSC cycles to wait for the tx completion */
#define NET_RX_CYCLES   3000000000          /* ... and for a reply, per attempt */
#define NET_ATTEMPTS    3
#define NET_SPIN_MAX    20000000            /* iteration bound if the TSC misbehaves */
/* virtio_pci_common_cfg offsets */
#define CC_DFSELECT     0x00
#define CC_DF           0x04
#define CC_GFSELECT     0x08
#define CC_GF           0x0c
#define CC_STATUS       0x14
#define CC_Q_SELECT     0x16
#define CC_Q_SIZE       0x18
#define CC_Q_MSIX       0x1a
#define CC_Q_ENABLE     0x1c
#define CC_Q_NOFF       0x1e
#define CC_Q_DESC       0x20
#define CC_Q_DRIVER     0x28
#define CC_Q_DEVICE     0x30
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
    call net_test
    lea msg_done(%rip), %rsi
    call puts
    /* `vmtest.wait`: stay up (halted, interrupts off) until the host ends the VM. */
    lea wait_key(%rip), %rdi
    call find_key
    jc 5f
    lea msg_waiting(%rip), %rsi
    call puts
6:  cli
    hlt
    jmp 6b
5:  mov $EXIT_SUCCESS, %al
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
 * cmdline_addr: rax = address of the kernel command line from the boot info (0 if there is
 * none), CF clear; CF set if the boot info lacks its magic ("HdrS" in the zero page,
 * XEN_HVM_START_MAGIC in PVH). Clobbers: eax, rsi.
 */
cmdline_addr:
    mov boot_info(%rip), %rsi
    xor %eax, %eax
    cmpl $1, boot_proto(%rip)
    je 1f
    cmpl $0x53726448, 0x202(%rsi)       /* "HdrS" */
    jne 2f
    mov 0x228(%rsi), %eax               /* hdr.cmd_line_ptr */
    clc
    ret
1:  cmpl $0x336ec578, (%rsi)            /* XEN_HVM_START_MAGIC_VALUE */
    jne 2f
    mov 0x18(%rsi), %rax                /* cmdline_paddr */
    clc
    ret
2:  stc
    ret

/*
 * find_key: finds the key rdi (NUL-terminated) on the command line, at its start or after a
 * space. CF clear and rsi = the byte after the key when found; CF set when not (or when there
 * is no command line). Clobbers: eax, ecx, edx, rsi, r8.
 */
find_key:
    call cmdline_addr
    jc 6f
    test %rax, %rax
    jz 6f
    mov %rax, %r8                   /* r8 = start of the command line */
    mov %rax, %rsi
    mov $4096, %ecx
1:  cmpb $0, (%rsi)
    je 6f
    cmp %r8, %rsi
    je 2f
    cmpb $' ', -1(%rsi)
    jne 4f
2:  xor %edx, %edx
3:  movzbl (%rdi,%rdx), %eax
    test %al, %al
    jz 5f                           /* the whole key matched */
    cmp %al, (%rsi,%rdx)
    jne 4f
    inc %edx
    jmp 3b
4:  inc %rsi
    dec %ecx
    jnz 1b
6:  stc
    ret
5:  add %rdx, %rsi
    clc
    ret

/*
 * print_cmdline: prints "cmdline: <text>" (at most CMDLINE_PRINT_MAX bytes).
 * Clobbers: eax, ecx, edx, rsi, r8-r11.
 */
print_cmdline:
    call cmdline_addr
    jc 8f
    mov %rax, %r11
    lea msg_cmdline(%rip), %rsi
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

/* ------------------------------------------------------------------------------------------
 * Step 5: virtio-net. State lives in the .data variables net_* (see the end of the file).
 */

/*
 * net_test: runs the ARP exchange if the command line asks for it (`vmtest.arp=OURS,PEER`),
 * else returns at once. Returns only on success; every failure goes to net_fail.
 * Clobbers: everything but rbx, rsp (saves rbx, r12-r15).
 */
net_test:
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    lea arp_key(%rip), %rdi
    call find_key
    jc net_done
    call parse_ip
    jc 6f
    mov %eax, net_our_ip(%rip)
    cmpb $',', (%rsi)
    jne 6f
    inc %rsi
    call parse_ip
    jc 6f
    mov %eax, net_peer_ip(%rip)
    movzbl (%rsi), %eax
    test %al, %al
    jz 7f
    cmp $' ', %al
    je 7f
6:  lea msg_net_bad_arg(%rip), %rsi
    jmp net_fail
7:  call net_find
    call net_init
    call net_post_rx
    mov $NET_ATTEMPTS, %r14d
8:  call net_send_arp
    call net_wait_reply             /* CF clear: got it */
    jnc 9f
    dec %r14d
    jnz 8b
    lea msg_net_no_reply(%rip), %rsi
    jmp net_fail
9:  lea msg_net_reply(%rip), %rsi
    call puts
    lea net_peer_ip(%rip), %rdi
    call put_ip
    lea msg_net_is_at(%rip), %rsi
    call puts
    lea net_reply_mac(%rip), %rdi
    call put_mac
    lea msg_nl(%rip), %rsi
    call puts
    call net_check_irq
net_done:
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    ret

/* net_fail: rsi = message. Prints it and ends the VM with EXIT_NET_FAILED. Does not return. */
net_fail:
    call puts
    mov $EXIT_NET_FAILED, %al
    out %al, $DEBUG_EXIT_PORT
1:  cli
    hlt
    jmp 1b

/*
 * parse_ip: parses a dotted IPv4 address at rsi. eax = the address as stored on the wire (first
 * octet in the low byte), rsi past it, CF clear; CF set if malformed (an octet without digits,
 * over 3 digits or over 255, or a missing dot). Clobbers: eax, ecx, edx, r9d, r10d.
 */
parse_ip:
    xor %r9d, %r9d                  /* the address */
    xor %r10d, %r10d                /* octets done */
1:  xor %eax, %eax                  /* octet value */
    xor %ecx, %ecx                  /* digits */
2:  movzbl (%rsi), %edx
    sub $'0', %edx
    cmp $9, %edx
    ja 3f
    imul $10, %eax, %eax
    add %edx, %eax
    inc %rsi
    inc %ecx
    cmp $3, %ecx
    ja 9f
    jmp 2b
3:  test %ecx, %ecx
    jz 9f
    cmp $255, %eax
    ja 9f
    mov %r10d, %ecx
    shl $3, %ecx
    shl %cl, %eax
    or %eax, %r9d
    inc %r10d
    cmp $4, %r10d
    je 4f
    cmpb $'.', (%rsi)
    jne 9f
    inc %rsi
    jmp 1b
4:  mov %r9d, %eax
    clc
    ret
9:  stc
    ret

/* cfg_rd32: ecx = register offset in the device's configuration space (r15d = its CONFIG_ADDRESS
 * base). eax = the aligned dword. Clobbers: eax, edx. */
cfg_rd32:
    mov %ecx, %eax
    and $0xfc, %eax
    or %r15d, %eax
    mov $PCI_CONFIG_ADDR, %dx
    out %eax, %dx
    mov $PCI_CONFIG_DATA, %dx
    in %dx, %eax
    ret

/* cfg_rd8: ecx = offset. eax = the byte there. Clobbers: eax, edx. */
cfg_rd8:
    call cfg_rd32
    push %rcx
    and $3, %ecx
    shl $3, %ecx
    shr %cl, %eax
    movzbl %al, %eax
    pop %rcx
    ret

/*
 * net_find: finds the first 1af4:1041 function on bus 0 (r15d = its CONFIG_ADDRESS base),
 * enables memory decoding and bus mastering, and walks its capabilities for the common,
 * notify and device-config structures (net_common, net_notify + net_notify_mult, net_devcfg).
 * Clobbers: eax, ecx, edx, rsi, r8-r13, r15.
 */
net_find:
    xor %ebx, %ebx
1:  mov %ebx, %r15d
    shl $11, %r15d
    or $0x80000000, %r15d
    xor %ecx, %ecx
    call cfg_rd32
    cmp $0x10411af4, %eax
    je 2f
    inc %ebx
    cmp $32, %ebx
    jb 1b
    lea msg_net_no_dev(%rip), %rsi
    jmp net_fail
2:  mov %ebx, net_slot(%rip)
    /* Command: memory space | bus master (a zero status half clears nothing). */
    mov $4, %ecx
    call cfg_rd32
    and $0xffff, %eax
    or $6, %eax
    mov %eax, %r8d
    mov %r15d, %eax
    or $4, %eax
    mov $PCI_CONFIG_ADDR, %dx
    out %eax, %dx
    mov %r8d, %eax
    mov $PCI_CONFIG_DATA, %dx
    out %eax, %dx
    /* Capability list: bounded walk. */
    mov $0x34, %ecx
    call cfg_rd8
    mov %eax, %r12d                 /* r12d = current capability offset */
    mov $48, %r13d
3:  test %r12d, %r12d
    jz 6f
    mov %r12d, %ecx
    call cfg_rd8
    cmp $0x11, %eax                 /* MSI-X */
    jne 10f
    mov %r12d, net_msix_cap(%rip)
    jmp 5f
10: cmp $0x09, %eax
    jne 5f
    lea 3(%r12), %ecx
    call cfg_rd8
    mov %eax, %r10d                 /* cfg_type */
    lea 4(%r12), %ecx
    call cfg_rd8
    mov %eax, %r8d                  /* bar */
    call bar_addr                   /* rax = the BAR's address, 0 if unusable */
    test %rax, %rax
    jz 5f
    mov %rax, %r11
    lea 8(%r12), %ecx
    call cfg_rd32
    add %rax, %r11                  /* structure address */
    cmp $1, %r10d
    jne 4f
    mov %r11, net_common(%rip)
    jmp 5f
4:  cmp $2, %r10d
    jne 7f
    mov %r11, net_notify(%rip)
    lea 16(%r12), %ecx
    call cfg_rd32
    mov %eax, net_notify_mult(%rip)
    jmp 5f
7:  cmp $4, %r10d
    jne 5f
    mov %r11, net_devcfg(%rip)
5:  lea 1(%r12), %ecx
    call cfg_rd8
    mov %eax, %r12d
    dec %r13d
    jnz 3b
6:  cmpq $0, net_common(%rip)
    je 8f
    cmpq $0, net_notify(%rip)
    je 8f
    cmpq $0, net_devcfg(%rip)
    je 8f
    mov net_msix_cap(%rip), %ecx    /* MSI-X table: BIR and offset at cap + 4 */
    test %ecx, %ecx
    jz 8f
    add $4, %ecx
    call cfg_rd32
    mov %eax, %r8d
    and $7, %r8d
    and $0xfffffff8, %eax
    mov %rax, %r11
    call bar_addr
    test %rax, %rax
    jz 8f
    add %r11, %rax
    mov %rax, net_msix_table(%rip)
    lea msg_net_dev(%rip), %rsi
    call puts
    mov net_slot(%rip), %eax
    mov $2, %ecx
    call put_hex
    lea msg_net_bar(%rip), %rsi
    call puts
    mov net_common(%rip), %rax
    mov $8, %ecx
    call put_hex
    lea msg_nl(%rip), %rsi
    jmp puts
8:  lea msg_net_no_caps(%rip), %rsi
    jmp net_fail

/* bar_addr: r8d = BAR index. rax = its memory address (64-bit BARs combined), or 0 for an I/O
 * BAR, an index over 5 or an unassigned BAR. Clobbers: eax, ecx, edx, r9. */
bar_addr:
    xor %eax, %eax
    cmp $5, %r8d
    ja 2f
    lea 0x10(,%r8d,4), %ecx
    call cfg_rd32
    test $1, %eax
    jnz 1f
    mov %eax, %r9d
    and $0xfffffff0, %r9d
    and $6, %eax
    cmp $4, %eax
    jne 3f
    add $4, %ecx
    call cfg_rd32
    shl $32, %rax
    or %rax, %r9
3:  mov %r9, %rax
    ret
1:  xor %eax, %eax
2:  ret

/*
 * net_init: reset, feature negotiation (VERSION_1, and MAC if offered), both queues, DRIVER_OK,
 * then reads and prints the MAC. rbx = common config throughout.
 * Clobbers: eax, ecx, edx, rsi, rdi, r8-r12, rbx.
 */
net_init:
    mov net_common(%rip), %rbx
    movb $0, CC_STATUS(%rbx)
    mov $1000, %ecx
1:  cmpb $0, CC_STATUS(%rbx)
    je 2f
    dec %ecx
    jnz 1b
    lea msg_net_no_reset(%rip), %rsi
    jmp net_fail
2:  movb $1, CC_STATUS(%rbx)        /* ACKNOWLEDGE */
    movb $3, CC_STATUS(%rbx)        /* | DRIVER */
    movl $1, CC_DFSELECT(%rbx)
    mov CC_DF(%rbx), %eax
    test $1, %eax                   /* VIRTIO_F_VERSION_1 = bit 32 */
    jnz 3f
    lea msg_net_no_v1(%rip), %rsi
    jmp net_fail
3:  movl $0, CC_DFSELECT(%rbx)
    mov CC_DF(%rbx), %eax
    and $0x20, %eax                 /* VIRTIO_NET_F_MAC */
    movl $0, CC_GFSELECT(%rbx)
    mov %eax, CC_GF(%rbx)
    movl $1, CC_GFSELECT(%rbx)
    movl $1, CC_GF(%rbx)
    movb $0xb, CC_STATUS(%rbx)      /* | FEATURES_OK */
    testb $8, CC_STATUS(%rbx)
    jnz 4f
    lea msg_net_features(%rip), %rsi
    jmp net_fail
4:  call net_msix_on
    xor %edi, %edi
    mov $RXQ_DESC, %esi
    call net_queue
    mov $1, %edi
    mov $TXQ_DESC, %esi
    call net_queue
    movb $0xf, CC_STATUS(%rbx)      /* | DRIVER_OK */
    testb $0x40, CC_STATUS(%rbx)    /* DEVICE_NEEDS_RESET: the device could not start */
    jz 5f
    lea msg_net_not_started(%rip), %rsi
    jmp net_fail
5:  mov net_devcfg(%rip), %rsi
    lea net_mac(%rip), %rdi
    mov $6, %ecx
6:  movb (%rsi), %al                /* byte reads: config fields have no wider alignment */
    movb %al, (%rdi)
    inc %rsi
    inc %rdi
    dec %ecx
    jnz 6b
    lea msg_net_mac(%rip), %rsi
    call puts
    lea net_mac(%rip), %rdi
    call put_mac
    lea msg_nl(%rip), %rsi
    jmp puts

/*
 * net_queue: edi = queue index (0 rx, 1 tx), esi = its descriptor table (avail ring at +0x1000,
 * used ring at +0x2000), rbx = common config. Sets the size to min(offered, NET_QUEUE_MAX), the
 * MSI-X vector (0 for rx, checked on read-back; none for tx), the ring addresses, records size and notify address in
 * net_qsize[edi] / net_qnotify[edi], and enables the queue. Clobbers: eax, ecx, edx, r8.
 */
net_queue:
    mov %di, CC_Q_SELECT(%rbx)
    movzwl CC_Q_SIZE(%rbx), %eax
    test %eax, %eax
    jnz 1f
    lea msg_net_no_queue(%rip), %rsi
    jmp net_fail
1:  cmp $NET_QUEUE_MAX, %eax
    jbe 2f
    mov $NET_QUEUE_MAX, %eax
2:  mov %ax, CC_Q_SIZE(%rbx)
    lea net_qsize(%rip), %rdx
    mov %eax, (%rdx,%rdi,4)
    mov $0xffff, %eax               /* tx: no vector */
    test %edi, %edi
    jnz 3f
    xor %eax, %eax                  /* rx: MSI-X vector 0 */
3:  mov %ax, CC_Q_MSIX(%rbx)
    cmp CC_Q_MSIX(%rbx), %ax
    je 4f
    lea msg_net_vector(%rip), %rsi
    jmp net_fail
4:  mov %esi, CC_Q_DESC(%rbx)
    movl $0, CC_Q_DESC+4(%rbx)
    lea 0x1000(%rsi), %eax
    mov %eax, CC_Q_DRIVER(%rbx)
    movl $0, CC_Q_DRIVER+4(%rbx)
    lea 0x2000(%rsi), %eax
    mov %eax, CC_Q_DEVICE(%rbx)
    movl $0, CC_Q_DEVICE+4(%rbx)
    movzwl CC_Q_NOFF(%rbx), %eax
    imul net_notify_mult(%rip), %eax
    add net_notify(%rip), %rax
    lea net_qnotify(%rip), %rdx
    mov %rax, (%rdx,%rdi,8)
    movw $1, CC_Q_ENABLE(%rbx)
    ret

/* net_post_rx: makes RX_BUF_COUNT device-writable buffers available on queue 0 and notifies.
 * Clobbers: eax, ecx, edx, rsi. */
net_post_rx:
    mov $RXQ_DESC, %esi
    xor %ecx, %ecx
1:  mov %ecx, %eax
    imul $RX_BUF_SIZE, %eax
    add $RX_BUFS, %eax
    mov %rax, (%rsi)                /* addr */
    movl $RX_BUF_SIZE, 8(%rsi)      /* len */
    movl $2, 12(%rsi)               /* flags = VIRTQ_DESC_F_WRITE, next = 0 */
    mov %cx, RXQ_DESC + 0x1000 + 4(,%rcx,2)   /* avail.ring[i] = i */
    add $16, %esi
    inc %ecx
    cmp $RX_BUF_COUNT, %ecx
    jb 1b
    movl $RX_BUF_COUNT, net_rx_avail(%rip)
    movw $RX_BUF_COUNT, RXQ_DESC + 0x1000 + 2  /* avail.idx (after the entries) */
    mov net_qnotify(%rip), %rdx
    movw $0, (%rdx)
    ret

/*
 * net_send_arp: builds the ARP request in TX_BUF, makes it available on queue 1, notifies, and
 * waits (bounded) until the device has used it. Clobbers: eax, ecx, edx, rsi, rdi, r8-r10.
 */
net_send_arp:
    mov $TX_BUF, %edi
    mov $TX_LEN, %ecx
    xor %eax, %eax
    cld
    rep stosb
    mov $TX_BUF + NET_HDR_LEN, %edi
    movl $0xffffffff, (%rdi)        /* destination: broadcast */
    movw $0xffff, 4(%rdi)
    mov net_mac(%rip), %eax         /* source: our MAC */
    mov %eax, 6(%rdi)
    movzwl net_mac+4(%rip), %eax
    mov %ax, 10(%rdi)
    movl $0x01000608, 12(%rdi)      /* type 0x0806, htype 0x0001 */
    movl $0x04060008, 16(%rdi)      /* ptype 0x0800, hlen 6, plen 4 */
    movw $0x0100, 20(%rdi)          /* op 1: request */
    mov net_mac(%rip), %eax         /* sha */
    mov %eax, 22(%rdi)
    movzwl net_mac+4(%rip), %eax
    mov %ax, 26(%rdi)
    mov net_our_ip(%rip), %eax      /* spa */
    mov %eax, 28(%rdi)
    mov net_peer_ip(%rip), %eax     /* tpa (tha stays zero) */
    mov %eax, 38(%rdi)
    /* Descriptor 0, device-readable. */
    movq $TX_BUF, TXQ_DESC
    movl $TX_LEN, TXQ_DESC + 8
    movl $0, TXQ_DESC + 12
    mov net_tx_avail(%rip), %eax
    mov net_qsize+4(%rip), %ecx
    dec %ecx
    and %eax, %ecx
    movw $0, TXQ_DESC + 0x1000 + 4(,%rcx,2)
    inc %eax
    mov %eax, net_tx_avail(%rip)
    mov %ax, TXQ_DESC + 0x1000 + 2
    mov net_qnotify+8(%rip), %rdx
    movw $1, (%rdx)
    mov $NET_TX_CYCLES, %edi
    call wait_start
1:  movzwl TXQ_DESC + 0x2000 + 2, %eax      /* used.idx */
    cmp net_tx_avail(%rip), %ax
    je 2f
    call wait_expired
    jnc 1b
    lea msg_net_tx_stuck(%rip), %rsi
    jmp net_fail
2:  ret

/*
 * net_msix_on: MSI-X table entry 0 = fixed interrupt NET_IRQ_VECTOR to APIC ID 0, unmasked; then
 * the capability's enable bit; and the local APIC software-enabled so it accepts the message.
 * Interrupts stay disabled (IF=0): net_check_irq finds the delivered vector in the LAPIC's IRR,
 * which proves the route (vector -> KVM GSI -> irqfd the backend signals) without an IDT.
 * Clobbers: eax, ecx, edx, rdi.
 */
net_msix_on:
    mov net_msix_table(%rip), %rdi
    movl $LAPIC_BASE, (%rdi)        /* address: destination APIC ID 0, physical */
    movl $0, 4(%rdi)
    movl $NET_IRQ_VECTOR, 8(%rdi)   /* data: fixed delivery, edge */
    movl $0, 12(%rdi)               /* vector control: unmasked */
    mov net_msix_cap(%rip), %ecx
    call cfg_rd32
    and $0x3fffffff, %eax           /* keep the table size; clear enable and function mask */
    or $0x80000000, %eax            /* MSI-X enable */
    mov %eax, %edi
    mov net_msix_cap(%rip), %eax
    or %r15d, %eax
    mov $PCI_CONFIG_ADDR, %dx
    out %eax, %dx
    mov %edi, %eax
    mov $PCI_CONFIG_DATA, %dx
    out %eax, %dx
    mov $LAPIC_BASE, %edi
    movl $0x1ff, LAPIC_SVR(%rdi)
    ret

/*
 * net_check_irq: waits (bounded) for NET_IRQ_VECTOR in the LAPIC's IRR, the trace of the MSI-X
 * message the device sent when it filled an rx buffer. Prints "net: msi-x interrupt received"
 * or fails. Clobbers: eax, ecx, edx, rsi, rdi, r8, r9.
 */
net_check_irq:
    mov $NET_TX_CYCLES, %edi
    call wait_start
    mov $(LAPIC_BASE + LAPIC_IRR + (NET_IRQ_VECTOR / 32) * 0x10), %esi
1:  mov (%rsi), %eax
    test $(1 << (NET_IRQ_VECTOR % 32)), %eax
    jnz 2f
    call wait_expired
    jnc 1b
    lea msg_net_no_irq(%rip), %rsi
    jmp net_fail
2:  lea msg_net_irq(%rip), %rsi
    jmp puts

/* wait_start: rdi = TSC cycles to wait. Starts a bounded wait: r8 = the TSC deadline,
 * r9d = the iteration budget (NET_SPIN_MAX, in case the TSC misbehaves). Clobbers: eax, edx. */
wait_start:
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    add %rdi, %rax
    mov %rax, %r8
    mov $NET_SPIN_MAX, %r9d
    ret

/* wait_expired: one step of the wait wait_start began: pauses, then CF set once the deadline
 * in r8 has passed or the budget in r9d is spent (r9d counts down). Clobbers: eax, edx, r9d. */
wait_expired:
    pause
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    cmp %r8, %rax
    jae 1f
    dec %r9d
    jz 1f
    clc
    ret
1:  stc
    ret

/*
 * net_wait_reply: polls queue 0's used ring until an ARP reply from the peer to our MAC arrives
 * (CF clear, its sender MAC in net_reply_mac) or NET_RX_CYCLES pass (CF set). Every other frame
 * goes back to the device. Clobbers: eax, ecx, edx, rsi, rdi, r8-r12.
 */
net_wait_reply:
    mov $NET_RX_CYCLES, %edi
    call wait_start
1:  movzwl RXQ_DESC + 0x2000 + 2, %eax      /* used.idx */
    cmp net_rx_used(%rip), %ax
    jne 2f
    call wait_expired
    jnc 1b
    ret                             /* CF set: timed out */
2:  mov net_rx_used(%rip), %eax
    mov net_qsize(%rip), %ecx
    dec %ecx
    and %eax, %ecx
    inc %eax
    mov %eax, net_rx_used(%rip)
    mov RXQ_DESC + 0x2000 + 4(,%rcx,8), %r10d   /* used.ring[i].id */
    mov RXQ_DESC + 0x2000 + 8(,%rcx,8), %r11d   /* used.ring[i].len */
    cmp $RX_BUF_COUNT, %r10d
    jae 1b                          /* not a buffer we gave: ignore it */
    mov %r10d, %esi
    imul $RX_BUF_SIZE, %esi
    add $RX_BUFS + NET_HDR_LEN, %esi            /* rsi = the frame */
    cmp $NET_HDR_LEN + 42, %r11d
    jb 5f
    cmpw $0x0608, 12(%rsi)          /* ARP */
    jne 5f
    cmpw $0x0200, 20(%rsi)          /* op 2: reply */
    jne 5f
    mov net_peer_ip(%rip), %eax
    cmp %eax, 28(%rsi)              /* from the peer */
    jne 5f
    mov net_mac(%rip), %eax
    cmp %eax, 32(%rsi)              /* to us */
    jne 5f
    movzwl net_mac+4(%rip), %eax
    cmp %ax, 36(%rsi)
    jne 5f
    mov 22(%rsi), %eax              /* sha */
    mov %eax, net_reply_mac(%rip)
    movzwl 26(%rsi), %eax
    mov %ax, net_reply_mac+4(%rip)
    clc
    ret
5:  /* Not ours: hand the buffer back. */
    mov net_rx_avail(%rip), %eax
    mov net_qsize(%rip), %ecx
    dec %ecx
    and %eax, %ecx
    mov %r10w, RXQ_DESC + 0x1000 + 4(,%rcx,2)
    inc %eax
    mov %eax, net_rx_avail(%rip)
    mov %ax, RXQ_DESC + 0x1000 + 2
    mov net_qnotify(%rip), %rdx
    movw $0, (%rdx)
    jmp 1b

/* put_mac: rdi = 6 bytes. Prints them as xx:xx:xx:xx:xx:xx. Clobbers: eax, ecx, edx, rdi,
 * r8-r10, r12. */
put_mac:
    mov $6, %r12d
1:  movzbl (%rdi), %eax
    mov $2, %ecx
    call put_hex
    inc %rdi
    dec %r12d
    jz 2f
    mov $':', %al
    call putc
    jmp 1b
2:  ret

/* put_ip: rdi = 4 bytes. Prints them as a.b.c.d. Clobbers: eax, ecx, edx, rdi, r8, r9, r11,
 * r12. */
put_ip:
    mov $4, %r12d
1:  movzbl (%rdi), %eax
    call put_dec
    inc %rdi
    dec %r12d
    jz 2f
    mov $'.', %al
    call putc
    jmp 1b
2:  ret

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
arp_key:      .asciz "vmtest.arp="
wait_key:     .asciz "vmtest.wait"
msg_waiting:  .asciz "vmm-test-guest: waiting for the host\n"
msg_net_bad_arg:  .asciz "vmm-test-guest: net: bad vmtest.arp\n"
msg_net_no_dev:   .asciz "vmm-test-guest: net: no virtio-net device\n"
msg_net_no_caps:  .asciz "vmm-test-guest: net: virtio or MSI-X capabilities missing, or BAR unassigned\n"
msg_net_dev:      .asciz "vmm-test-guest: net: virtio-net at 00:"
msg_net_bar:      .asciz ".0 bar "
msg_net_no_reset: .asciz "vmm-test-guest: net: device did not reset\n"
msg_net_no_v1:    .asciz "vmm-test-guest: net: no VIRTIO_F_VERSION_1\n"
msg_net_features: .asciz "vmm-test-guest: net: FEATURES_OK refused\n"
msg_net_no_queue: .asciz "vmm-test-guest: net: queue missing\n"
msg_net_not_started: .asciz "vmm-test-guest: net: device needs reset after DRIVER_OK\n"
msg_net_mac:      .asciz "vmm-test-guest: net: mac "
msg_net_tx_stuck: .asciz "vmm-test-guest: net: tx not completed\n"
msg_net_no_reply: .asciz "vmm-test-guest: net: no arp reply\n"
msg_net_reply:    .asciz "vmm-test-guest: net: arp reply from "
msg_net_vector:   .asciz "vmm-test-guest: net: MSI-X vector refused\n"
msg_net_irq:      .asciz "vmm-test-guest: net: msi-x interrupt received\n"
msg_net_no_irq:   .asciz "vmm-test-guest: net: no msi-x interrupt\n"
msg_net_is_at:    .asciz " is-at "
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
    .balign 8
net_common:      .quad 0        /* virtio structures, from the capabilities */
net_notify:      .quad 0
net_devcfg:      .quad 0
net_qnotify:     .quad 0, 0     /* notify address of queue 0, 1 */
net_msix_table:  .quad 0
net_notify_mult: .long 0
net_msix_cap:    .long 0        /* config-space offset of the MSI-X capability */
net_qsize:       .long 0, 0     /* size of queue 0, 1 */
net_slot:        .long 0
net_rx_avail:    .long 0        /* next avail index, free-running (low 16 bits used) */
net_rx_used:     .long 0        /* used entries consumed */
net_tx_avail:    .long 0
net_our_ip:      .long 0        /* wire order */
net_peer_ip:     .long 0
net_mac:         .fill 8, 1, 0
net_reply_mac:   .fill 8, 1, 0
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
