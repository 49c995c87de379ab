/* offload's warm-container agent: runs batched items one after another (see worker/warm.py).
 *
 * Static, no libc: x86-64 Linux system calls only, so it runs in any image. It is the init (PID 1)
 * of a warm container, reaping every orphan. It reads requests on stdin, each
 *     <10 decimal digits: length N><N bytes: token NUL argc NUL argv... envc NUL env...>
 * runs argv (a PATH lookup as exec does) with its environment = the agent's, each K=V of the
 * request replacing its K; the item's stdout and stderr are the container's. Once it ends, it
 * kills every other process of the container (nothing of an item outlives it), then writes
 *     RS token ':' status RS   on stdout   and   RS token RS   on stderr
 * (RS = 0x1e; status = the exit code, 128 + N for signal N, 127 when argv[0] could not be
 * run). End of file on stdin (the worker went away) ends it, and with it the container.
 *
 * Build: infra/build-warm-agent.sh (writes src/offload/worker/warm_agent.py).
 */
typedef unsigned long u64;
typedef long i64;

static i64 sys3(i64 n, i64 a, i64 b, i64 c) {
    i64 r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
static i64 sys4(i64 n, i64 a, i64 b, i64 c, i64 d) {
    i64 r;
    register i64 r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return r;
}
#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_pipe2 293
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_kill 62
#define SYS_getpid 39
#define SYS_open 2
#define SYS_dup2 33
#define ECHILD 10
#define EINTR 4
#define O_CLOEXEC 02000000

#define MAXREQ (4 << 20)
#define MAXV 65536
static char req[MAXREQ + 1];
static char *argv[MAXV + 1], *envp[MAXV + 1];
static char **base_env;
static char path_buf[8192];

static u64 slen(const char *s) { u64 n = 0; while (s[n]) n++; return n; }

static void put(int fd, const char *s, u64 n) {
    while (n) {
        i64 w = sys3(SYS_write, fd, (i64)s, (i64)n);
        if (w == -EINTR) continue;
        if (w <= 0) return;
        s += w; n -= (u64)w;
    }
}

static int read_full(char *buf, u64 n) { /* 1: got n bytes, 0: end of file */
    while (n) {
        i64 r = sys3(SYS_read, 0, (i64)buf, (i64)n);
        if (r == -EINTR) continue;
        if (r <= 0) return 0;
        buf += r; n -= (u64)r;
    }
    return 1;
}

static u64 number(const char *s, u64 n) { u64 v = 0; for (u64 i = 0; i < n; i++) v = v * 10 + (u64)(s[i] - '0'); return v; }

static int same_key(const char *a, const char *b) { /* "K=..." vs "K=..." */
    while (*a && *a != '=' && *a == *b) { a++; b++; }
    return *a == '=' && *b == '=';
}

static const char *env_get(char **env, const char *key) { /* key includes '=' */
    for (; *env; env++) {
        const char *e = *env, *k = key;
        while (*k && *e == *k) { e++; k++; }
        if (!*k) return e;
    }
    return 0;
}

static void run_child(char **av, char **ev) {
    const char *name = av[0];
    /* stdin is the worker's request channel: the item gets /dev/null, as a job does */
    i64 null = sys3(SYS_open, (i64)"/dev/null", 0, 0);
    if (null >= 0) { sys3(SYS_dup2, null, 0, 0); if (null != 0) sys3(SYS_close, null, 0, 0); }
    else sys3(SYS_close, 0, 0, 0);
    int slash = 0;
    for (const char *p = name; *p; p++) if (*p == '/') slash = 1;
    if (slash) {
        sys3(SYS_execve, (i64)name, (i64)av, (i64)ev);
    } else {
        const char *path = env_get(ev, "PATH=");
        if (!path) path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        u64 nl = slen(name);
        while (1) {
            const char *end = path;
            while (*end && *end != ':') end++;
            u64 dl = (u64)(end - path);
            if (dl + nl + 2 < sizeof path_buf) {
                u64 i = 0;
                for (; i < dl; i++) path_buf[i] = path[i];
                if (dl == 0) path_buf[i++] = '.';
                path_buf[i++] = '/';
                for (u64 j = 0; j < nl; j++) path_buf[i++] = name[j];
                path_buf[i] = 0;
                sys3(SYS_execve, (i64)path_buf, (i64)av, (i64)ev);
            }
            if (!*end) break;
            path = end + 1;
        }
    }
    put(2, "offload: cannot run ", 20);
    put(2, name, slen(name));
    put(2, "\n", 1);
    sys3(SYS_exit, 127, 0, 0);
}

static void decimal(char *out, u64 *n, u64 v) {
    char tmp[24]; int k = 0;
    do { tmp[k++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (k) out[(*n)++] = tmp[--k];
}

static void serve(void) {
    char head[10];
    while (read_full(head, 10)) {
        u64 n = number(head, 10);
        if (n > MAXREQ || !read_full(req, n)) return;
        req[n] = 0;
        char *p = req, *end = req + n;
        char *token = p; p += slen(p) + 1;
        u64 argc = number(p, slen(p)); p += slen(p) + 1;
        for (u64 i = 0; i < argc && i < MAXV && p < end; i++) { argv[i] = p; p += slen(p) + 1; }
        argv[argc < MAXV ? argc : MAXV] = 0;
        u64 envc = number(p, slen(p)); p += slen(p) + 1;
        u64 k = 0;
        for (char **e = base_env; *e && k < MAXV; e++) envp[k++] = *e;
        for (u64 i = 0; i < envc && p < end; i++) {
            u64 j = 0;
            while (j < k && !same_key(envp[j], p)) j++;
            if (j == k && k < MAXV) k++;
            envp[j] = p;
            p += slen(p) + 1;
        }
        envp[k] = 0;
        i64 status = 127;
        i64 pid = argc ? sys3(SYS_fork, 0, 0, 0) : -1;
        if (pid == 0) run_child(argv, envp);
        if (pid > 0) {
            int ws = 0;
            while (1) {
                i64 r = sys4(SYS_wait4, -1, (i64)&ws, 0, 0);
                if (r == pid) break;
                if (r < 0 && r != -EINTR) break;
            }
            int sig = ws & 0x7f;
            status = sig ? 128 + sig : (ws >> 8) & 0xff;
        }
        /* whatever the item left running: only as the init of the container's own PID
         * namespace (pid 1), where -1 means every other process of the container; anywhere
         * else it would mean every process of the machine the user may signal */
        if (sys3(SYS_getpid, 0, 0, 0) == 1) sys3(SYS_kill, -1, 9, 0);
        while (1) {
            int ws;
            i64 r = sys4(SYS_wait4, -1, (i64)&ws, 0, 0);
            if (r == -EINTR) continue;
            if (r < 0) break;
        }
        char out[128]; u64 m = 0;
        u64 tl = slen(token); if (tl > 64) tl = 64;
        out[m++] = 0x1e;
        for (u64 i = 0; i < tl; i++) out[m++] = token[i];
        out[m++] = ':';
        decimal(out, &m, (u64)status);
        out[m++] = 0x1e;
        put(1, out, m);
        m = 0;
        out[m++] = 0x1e;
        for (u64 i = 0; i < tl; i++) out[m++] = token[i];
        out[m++] = 0x1e;
        put(2, out, m);
    }
}

void __attribute__((noreturn, used)) start_c(u64 *sp) {
    i64 argc = (i64)sp[0];
    base_env = (char **)(sp + 1 + argc + 1);
    serve();
    sys3(SYS_exit, 0, 0, 0);
    __builtin_unreachable();
}

__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call start_c\n hlt\n");
