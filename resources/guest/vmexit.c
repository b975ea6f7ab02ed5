/* vmexit STATUS [PORT]: writes STATUS (0..255) to the VMM's debug-exit I/O port (default 0xf4)
 * so the VMM exits with the guest's status. Static, for the stock guest's initramfs: the cloud
 * kernel has no /dev/port, and busybox has no port I/O applet. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: vmexit STATUS [PORT]\n");
        return 2;
    }
    unsigned long status = strtoul(argv[1], NULL, 0);
    unsigned long port = argc > 2 ? strtoul(argv[2], NULL, 0) : 0xf4;
    if (status > 255 || port > 0xffff) {
        fprintf(stderr, "vmexit: status must be 0..255 and port 0..0xffff\n");
        return 2;
    }
    if (ioperm(port, 1, 1) != 0) {
        perror("vmexit: ioperm");
        return 1;
    }
    outb((unsigned char)status, (unsigned short)port);
    return 0;
}
