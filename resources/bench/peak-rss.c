/* peak-rss CMD ARGS...: runs CMD and prints its peak RSS (ru_maxrss, KiB) on stderr as
 * "peak-rss-kib N"; exits with CMD's status. A small C parent keeps the pre-exec copy of the
 * parent (whose high-water mark Linux folds into the child's ru_maxrss) at ~1 MiB. */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: peak-rss CMD [ARGS...]\n"); return 2; }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) { execvp(argv[1], argv + 1); _exit(127); }
    int st; struct rusage ru;
    wait4(pid, &st, 0, &ru);
    fprintf(stderr, "peak-rss-kib %ld\n", ru.ru_maxrss);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}
