/* scope-ebpf: CPython USDT probes and scheduler tracepoints.
 *
 * Compiled at run time by bcc (scope_ebpf/bpf.py passes the -D sizes). The
 * function probes are attached by the controller through the uprobe PMU with
 * a BPF cookie that indexes `specs`; the tracepoints attach themselves.
 * Only processes in `targets` are recorded: everything else costs one lookup.
 * No kernel struct is read: the headers may belong to another kernel.
 */
#include <uapi/linux/ptrace.h>
#include "scope.h"

#ifndef CALLS_RB_PAGES
#define CALLS_RB_PAGES 2048
#endif
#ifndef FUNCS_RB_PAGES
#define FUNCS_RB_PAGES 256
#endif
#ifndef MAX_SPILL
#define MAX_SPILL 4096
#endif
#ifndef PATHS_RB_PAGES
#define PATHS_RB_PAGES 64
#endif
#ifndef SCHED_RB_PAGES
#define SCHED_RB_PAGES 256
#endif
#ifndef MAX_THREADS
#define MAX_THREADS 4096
#endif
#ifndef MAX_PATHS
#define MAX_PATHS 65536
#endif
#ifndef MAX_FUNCS
#define MAX_FUNCS 65536
#endif
#ifndef MAX_TARGETS
#define MAX_TARGETS 1024
#endif
#ifndef MAX_SPECS
#define MAX_SPECS 256
#endif
#ifndef MAX_IGNORED
#define MAX_IGNORED 16384
#endif

/* k of a frame pushed only to keep the eval function's entries and exits paired
 * (a generator's creation runs a frame that is not a call): popped unseen */
#define NOT_A_CALL 0xffffffff

struct func_key {
    __u64 name;   /* pointers into the target: stable while the code object lives */
    __u64 file;
    __u32 pid;
    __s32 line;
};

struct gc_state {
    __u64 start_ns;
    __s64 generation;
    __u64 stack_id;
};

struct import_stack {
    __u32 depth;
    __u32 pad;
    __u64 start_ns[SCOPE_IMPORT_DEPTH];
};

struct offcpu_state {
    __u64 off_ns;
    __u64 wake_ns;
    __s64 prev_state;
    __u32 pid;
    __u32 func_id;
    __u32 gil;
    __u64 stack_id;
};

BPF_RINGBUF_OUTPUT(calls_rb, CALLS_RB_PAGES);
BPF_RINGBUF_OUTPUT(funcs_rb, FUNCS_RB_PAGES);
BPF_RINGBUF_OUTPUT(gc_rb, 16);
BPF_RINGBUF_OUTPUT(sched_rb, SCHED_RB_PAGES);
BPF_RINGBUF_OUTPUT(proc_rb, 64);
BPF_RINGBUF_OUTPUT(imports_rb, 64);
BPF_RINGBUF_OUTPUT(audit_rb, 256);

BPF_HASH(targets, __u32, __u32, MAX_TARGETS);         /* tgid -> PROBE_* mask */
/* tgid -> 1: processes user space decided not to trace (the daemon's selectors),
 * so that probes attached for any process do not adopt them again; least
 * recently used forgotten first, which costs only a second decision */
BPF_TABLE("lru_hash", __u32, __u8, ignored, MAX_IGNORED);
BPF_ARRAY(specs, struct probe_spec, MAX_SPECS);       /* cookie -> argument locations */
BPF_ARRAY(frame_offs, struct frame_offsets, MAX_SPECS); /* cookie -> CPython struct offsets */
BPF_HASH(funcs, struct func_key, struct func_info, MAX_FUNCS); /* interned functions */
BPF_PERCPU_ARRAY(func_seq, __u32, 1);                 /* per-CPU id sequence: no atomics needed */
/* tid -> shadow stack: 16 KiB each, so allocated per traced thread, not up front */
/* tid -> shadow stack: 16 KiB each, so allocated per traced thread, not up front */
BPF_F_TABLE("hash", __u32, struct thread_stack, stacks, MAX_THREADS, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", __u32, struct thread_stack, exited_stacks, MAX_THREADS, BPF_F_NO_PREALLOC);
/* never written: the template new stacks are copied from (too big for a per-CPU
 * array, and with no writer it needs none) */
BPF_ARRAY(zero_stack, struct thread_stack, 1);
/* call paths already announced on paths_rb: least recently used forgotten first,
 * and announced again when seen again (the controller keeps one row per path) */
BPF_TABLE("lru_hash", __u64, __u8, paths, MAX_PATHS);
BPF_RINGBUF_OUTPUT(paths_rb, PATHS_RB_PAGES);
BPF_HASH(gc_states, __u32, struct gc_state, MAX_THREADS);
BPF_HASH(offcpu, __u32, struct offcpu_state, MAX_THREADS);
BPF_HASH(gil_waits, __u32, __u32, MAX_THREADS);       /* tid -> 1 inside the GIL's wait */
BPF_HASH(imports, __u32, struct import_stack, MAX_THREADS);
BPF_PERCPU_ARRAY(stats, __u64, STAT_COUNT);
BPF_PERCPU_ARRAY(call_stage, struct call_batch, 1);   /* calls waiting for their batch */
BPF_ARRAY(tracer_pid, __u32, 1);                      /* never trace ourselves in exe mode */
BPF_ARRAY(config, struct config, 1);
BPF_ARRAY(breaker, struct breaker, 1);
BPF_ARRAY(budgets, struct budget, MAX_GROUPS);        /* group -> a selector's budget */
BPF_HASH(proc_budgets, __u32, struct budget, MAX_TARGETS); /* pid -> its own budget */
BPF_HASH(tids, __u32, __u32, MAX_THREADS);            /* --tid / --thread-name selection */
BPF_F_TABLE("percpu_hash", __u32, struct fstat, fstats, MAX_FUNCS, BPF_F_NO_PREALLOC);
/* A function's aggregates when its per-CPU ones could not be allocated (see
 * fstat_of): preallocated, shared by the CPUs, updated atomically. */
BPF_HASH(fstats_spill, __u32, struct fstat, MAX_SPILL);
BPF_PERCPU_ARRAY(zero_fstat, struct fstat, 1);        /* template for new fstats entries */

static __always_inline void stat_add(__u32 idx)
{
    __u64 *v = stats.lookup(&idx);
    if (v)
        (*v)++;
}

static __always_inline void stat_add_n(__u32 idx, __u64 n)
{
    __u64 *v = stats.lookup(&idx);
    if (v)
        *v += n;
}

/* This CPU's staging batch. */
static __always_inline struct call_batch *stage(void)
{
    __u32 zero = 0;

    return call_stage.lookup(&zero);
}

static __always_inline void flush_calls(struct call_batch *b)
{
    __u32 n = b->count;

    if (!n)
        return;
    if (calls_rb.ringbuf_output(b, sizeof(*b), BPF_RB_NO_WAKEUP)) {
        stat_add_n(STAT_CALLS_LOST, n);
        /* counted, but no row: each function's aggregates say so (a loop, not
         * unrolled 64 times in each of the programs that flush) */
#pragma clang loop unroll(disable)
        for (__u32 i = 0; i < CALL_BATCH; i++) {
            if (i >= n)
                break;
            struct call_event *e = &b->ev[i];
            if (e->flags & CALL_OPEN)
                continue;  /* open calls are rows only, never counted */
            __u32 fid = e->func_id;
            struct fstat *fs = fstats.lookup(&fid);
            if (fs)
                fs->lost++;
            else if ((fs = fstats_spill.lookup(&fid)))
                __sync_fetch_and_add(&fs->lost, 1);
        }
    }
    b->count = 0;
}

/* The next free slot of the batch (filled by the caller, then committed). */
static __always_inline struct call_event *stage_slot(struct call_batch *b, __u64 now)
{
    /* stage_commit flushes a full batch, so count < CALL_BATCH here; the mask
     * below is for the verifier */
    if (!b->count)
        b->first_ns = now;
    return &b->ev[b->count & (CALL_BATCH - 1)];
}

static __always_inline void stage_commit(struct call_batch *b, __u64 now)
{
    b->count++;
    if (b->count >= CALL_BATCH || now - b->first_ns >= CALL_BATCH_AGE_NS)
        flush_calls(b);
}

/* The empty asm pins each load in its own case: otherwise clang merges the
 * cases into one load from a computed ctx offset, which the verifier rejects. */
#define READ_REG(ctx, r) ({ __u64 _v = (ctx)->r; asm volatile("" : "+r"(_v)); _v; })

static __always_inline __u64 reg_value(struct pt_regs *ctx, __u8 reg)
{
    /* Order of scope_ebpf.usdt.REGS. */
    switch (reg) {
    case 0: return READ_REG(ctx, r15);
    case 1: return READ_REG(ctx, r14);
    case 2: return READ_REG(ctx, r13);
    case 3: return READ_REG(ctx, r12);
    case 4: return READ_REG(ctx, bp);
    case 5: return READ_REG(ctx, bx);
    case 6: return READ_REG(ctx, r11);
    case 7: return READ_REG(ctx, r10);
    case 8: return READ_REG(ctx, r9);
    case 9: return READ_REG(ctx, r8);
    case 10: return READ_REG(ctx, ax);
    case 11: return READ_REG(ctx, cx);
    case 12: return READ_REG(ctx, dx);
    case 13: return READ_REG(ctx, si);
    case 14: return READ_REG(ctx, di);
    case 15: return READ_REG(ctx, ip);
    case 16: return READ_REG(ctx, sp);
    }
    return 0;
}

static __always_inline __s64 read_arg(struct pt_regs *ctx, __u8 kind, __u8 reg,
                                      __u8 size, __u8 is_signed, __s64 disp)
{
    __u64 v;

    if (kind == ARG_CONST)
        return disp;
    if (kind != ARG_REG && kind != ARG_MEM)
        return 0;
    v = reg_value(ctx, reg);
    if (kind == ARG_MEM) {
        __u64 addr = v + disp;
        v = 0;
        bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    }
    switch (size) {
    case 1: return is_signed ? (__s64)(__s8)v : (__s64)(__u8)v;
    case 2: return is_signed ? (__s64)(__s16)v : (__s64)(__u16)v;
    case 4: return is_signed ? (__s64)(__s32)v : (__s64)(__u32)v;
    }
    return (__s64)v;
}

#define ARG(ctx, sp, i) read_arg(ctx, (sp)->kind##i, (sp)->reg##i, (sp)->size##i, \
                                 (sp)->signed##i, (sp)->disp##i)

static __always_inline struct probe_spec *spec_of(struct pt_regs *ctx)
{
    __u32 idx = bpf_get_attach_cookie(ctx);
    return specs.lookup(&idx);
}

/* Intern a function not yet in `funcs` (with its FINFO_* flags); then *names is
 * a reserved func_event the caller fills and submits (or 0 if the buffer was
 * full, counted). */
static __always_inline struct func_info func_new(struct func_key *key, __u32 flags,
                                                 struct func_event **names)
{
    struct func_info *found;
    struct func_info info = {.id = SCOPE_NO_FUNC, .k = 1, .flags = flags};
    __u32 zero = 0;
    __u32 *seq;
    struct func_event *e;

    *names = 0;
    seq = func_seq.lookup(&zero);
    if (!seq)
        return info;
    /* Unique without atomics: a per-CPU sequence tagged with the CPU. */
    info.id = (++*seq << 8) | (bpf_get_smp_processor_id() & 0xff);
    if (funcs.insert(key, &info)) {
        /* Another CPU interned it first, or the map is full. */
        found = funcs.lookup(key);
        if (found)
            return *found;
        stat_add(STAT_FUNC_FULL);
        info.id = SCOPE_NO_FUNC;
        return info;
    }
    e = funcs_rb.ringbuf_reserve(sizeof(*e));
    if (!e) {
        stat_add(STAT_FUNCS_LOST);
        return info;
    }
    e->key_name = key->name;
    e->key_file = key->file;
    e->func_id = info.id;
    e->pid = key->pid;
    e->line = key->line;
    e->flags = 0;
    e->name[0] = 0;
    e->file[0] = 0;
    *names = e;
    return info;
}

/* The code object's first line, if `code` is the code object whose name and
 * file a USDT probe passed (compact ASCII str objects hold their text inline,
 * so the probe's char pointers are the objects' data): 1 and *line set. */
static __always_inline int code_first_line(__u64 code, __u64 name, __u64 file,
                                           struct frame_offsets *fo, __s32 *line)
{
    __u64 w[8] = {};

    if (!code || bpf_probe_read_user(w, sizeof(w), (void *)(code + fo->code_base)))
        return 0;
    if (w[fo->name_word & 7] + fo->str_data != name || w[fo->file_word & 7] + fo->str_data != file)
        return 0;
    *line = w[fo->line_word & 7] >> (fo->line_shift & 32);
    return 1;
}

static __always_inline __u32 finfo_flags(__u64 code, struct frame_offsets *fo)
{
    __u32 co_flags = 0;

    if (fo->code_flags)
        bpf_probe_read_user(&co_flags, 4, (void *)(code + fo->code_flags));
    return co_flags & CO_GENLIKE ? FINFO_GENLIKE : 0;
}

/* The entry probes give the line executing, which for a resumed generator or
 * (3.15) a function with cells is not the def line. Once per function, read
 * it from the code object of the probe's frame (checked against the name and
 * file the probe passed), and whether the code is generator-like. */
static __always_inline void code_info(struct pt_regs *ctx, __u64 name, __u64 file, __u64 iframe,
                                      __s32 *line, __u32 *flags)
{
    __u32 idx = bpf_get_attach_cookie(ctx);
    struct frame_offsets *fo = frame_offs.lookup(&idx);
    __u64 code = 0;

    if (!fo || !fo->code_base || !name || !file || !iframe)
        return;
    bpf_probe_read_user(&code, 8, (void *)(iframe + fo->frame_executable));
    code &= fo->executable_mask;
    if (code_first_line(code, name, file, fo, line))
        *flags = finfo_flags(code, fo);
}

/* USDT probes pass the names as UTF-8 C strings (NULL if not encodable). */
static __always_inline struct func_info intern(struct pt_regs *ctx, __u32 pid, __u64 file,
                                               __u64 name, __s32 line, __u64 iframe)
{
    struct func_key key = {.name = name, .file = file, .pid = pid, .line = line};
    struct func_info *found = funcs.lookup(&key);
    struct func_event *e;
    __s32 first = line;
    __u32 flags = 0;

    if (found)
        return *found;
    code_info(ctx, name, file, iframe, &first, &flags);
    struct func_info info = func_new(&key, flags, &e);

    if (!e)
        return info;
    e->line = first;
    if (name)
        bpf_probe_read_user_str(e->name, sizeof(e->name), (void *)name);
    else
        e->flags |= FUNC_NAME_NULL;
    if (file)
        bpf_probe_read_user_str(e->file, sizeof(e->file), (void *)file);
    else
        e->flags |= FUNC_FILE_NULL;
    funcs_rb.ringbuf_submit(e, 0);
    return info;
}

/* Text of a str object if it is compact ASCII (the common case for names);
 * anything else is reported as null rather than guessed. */
static __always_inline int read_pystr(char *dst, __u32 size, __u64 str,
                                      struct frame_offsets *fo)
{
    __u8 state = 0;

    if (!str)
        return -1;
    bpf_probe_read_user(&state, 1, (void *)(str + fo->str_state));
    if (!(state & (1 << 5)) || !(state & (1 << 6)))  /* compact, ascii */
        return -1;
    return bpf_probe_read_user_str(dst, size, (void *)(str + fo->str_data)) > 0 ? 0 : -1;
}

/* The eval-function path: a function is its (name, file, first line) str
 * objects, as on the USDT path, rather than its code object's address, which
 * CPython reuses once a code object is freed. */
static __always_inline struct func_info intern_code(__u32 pid, __u64 code,
                                                   struct frame_offsets *fo)
{
    struct func_info none = {.id = SCOPE_NO_FUNC, .k = 1};
    __u64 w[8] = {};
    struct func_event *e;

    if (!code)
        return none;
    bpf_probe_read_user(w, sizeof(w), (void *)(code + fo->code_base));
    __u64 name = w[fo->name_word & 7];
    __u64 file = w[fo->file_word & 7];
    __s32 line = w[fo->line_word & 7] >> (fo->line_shift & 32);
    struct func_key key = {.name = name, .file = file, .pid = pid, .line = line};
    struct func_info *found = funcs.lookup(&key);

    if (found)
        return *found;
    struct func_info info = func_new(&key, finfo_flags(code, fo), &e);

    if (!e)
        return info;
    if (read_pystr(e->name, sizeof(e->name), name, fo))
        e->flags |= FUNC_NAME_NULL;
    if (read_pystr(e->file, sizeof(e->file), file, fo))
        e->flags |= FUNC_FILE_NULL;
    funcs_rb.ringbuf_submit(e, 0);
    return info;
}

/* A process event with the current task's comm and no file name, counted;
 * the caller may change those and submits it. 0 if the buffer is full. */
static __always_inline struct proc_event *proc_reserve(__u32 kind, __u32 pid, __u32 tid,
                                                       __u32 other)
{
    struct proc_event *e = proc_rb.ringbuf_reserve(sizeof(*e));

    stat_add(STAT_PROC);
    if (!e) {
        stat_add(STAT_PROC_LOST);
        return 0;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->kind = kind;
    e->pid = pid;
    e->tid = tid;
    e->other_pid = other;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    e->filename[0] = 0;
    return e;
}

static __always_inline void proc_event(__u32 kind, __u32 pid, __u32 tid, __u32 other)
{
    struct proc_event *e = proc_reserve(kind, pid, tid, other);

    if (e)
        proc_rb.ringbuf_submit(e, 0);
}

/* Make ``pid`` a target with ``mask`` and tell user space, which then decides
 * (the daemon: confirm with its selectors' sets, or ignore it). The event goes
 * first: without it user space would never hear of the process, so a full
 * buffer leaves it unadopted (counted) until its next probe hit. ``sp_reg``:
 * the stack pointer at the program's entry point (argv is read there), or 0. */
static __always_inline __u32 adopt(__u32 pid, __u32 mask, __u32 cookie, __u64 sp_reg)
{
    struct proc_event *e = proc_reserve(PROC_ATTACH, pid, pid, cookie);
    __u64 argv0 = 0, argc = 0;

    if (!e) {
        stat_add(STAT_ADOPT_LOST);
        return 0;
    }
    if (targets.insert(&pid, &mask)) {  /* another CPU was first, or the map is full */
        proc_rb.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
        return 0;
    }
    proc_budgets.delete(&pid);  /* an exited process's of this pid, not read yet */
    e->uid = bpf_get_current_uid_gid();
    e->cgroup_id = bpf_get_current_cgroup_id();
    e->argc = 0;
    if (sp_reg) {
        /* At the ELF entry point the stack is argc, argv[0..], NULL, envp: the
         * argument strings lie side by side, as /proc/PID/cmdline reads them. */
        bpf_probe_read_user(&argc, 8, (void *)sp_reg);
        bpf_probe_read_user(&argv0, 8, (void *)(sp_reg + 8));
        if (!argv0)
            ;
        else if (bpf_probe_read_user(e->filename, sizeof(e->filename), (void *)argv0) == 0)
            e->argc = argc;
        else if (bpf_probe_read_user_str(e->filename, sizeof(e->filename), (void *)argv0) > 0)
            e->argc = 1;  /* near the top of the stack: the first one only */
    }
    stat_add(STAT_ADOPTED);
    /* forced: the host's execs before it went without a wakeup, and the
     * default (adaptive) one is skipped while those are unread */
    proc_rb.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
    return mask;
}

/* The probe sets (PROBE_*) a process is traced with; 0 if it is not a target. */
static __always_inline __u32 is_target(__u32 pid, struct probe_spec *sp)
{
    __u32 zero = 0;
    __u32 *self, *mask = targets.lookup(&pid);
    struct config *c;

    if (mask)
        return *mask;
    if (!sp || !(sp->flags & SPEC_ANY_PID))
        return 0;
    self = tracer_pid.lookup(&zero);
    c = config.lookup(&zero);
    if (!self || *self == pid || !c || ignored.lookup(&pid))
        return 0;
    /* First hit of a process on a binary attached in exe mode (or, in the
     * daemon, of one running before its interpreter file was attached). */
    return adopt(pid, c->any_pid_mask, NO_COOKIE, 0);
}

/* The ELF entry point of an interpreter file the daemon watches: the first
 * instruction of every process that runs it, before any Python. The process
 * is adopted with the sets any selector might give it (spec adopt_mask) and
 * its rows wait in the ring buffers until user space has decided. */
int on_start(struct pt_regs *ctx)
{
    __u32 zero = 0, pid = bpf_get_current_pid_tgid() >> 32;
    __u32 cookie = bpf_get_attach_cookie(ctx);
    struct probe_spec *sp = specs.lookup(&cookie);
    __u32 *self = tracer_pid.lookup(&zero);

    if (!sp || !sp->adopt_mask || !self || *self == pid || targets.lookup(&pid)
        || ignored.lookup(&pid))
        return 0;
    adopt(pid, sp->adopt_mask, cookie, PT_REGS_SP(ctx));
    return 0;
}

/* A shadow stack built before ``generation`` (probes detached meanwhile, or a
 * budget skipped hits and re-admitted) restarts empty: its frames' returns
 * will not be matched, and they are counted nowhere else (frames_reset). */
static __always_inline void restart_if_stale(struct thread_stack *st, __u32 generation)
{
    if (st->generation == generation)
        return;
    if (st->depth)
        stat_add_n(STAT_FRAMES_RESET, st->depth < SCOPE_MAX_DEPTH ? st->depth : SCOPE_MAX_DEPTH);
    st->depth = 0;
    st->generation = generation;
}

static __always_inline struct thread_stack *stack_of(__u32 tid, __u32 pid,
                                                     struct probe_spec *sp, __u32 generation,
                                                     __u32 mask)
{
    struct thread_stack *st = stacks.lookup(&tid);
    __u32 zero = 0;

    if (st && st->pid == pid) {
        if (!(mask & PROBE_CALLS)) {
            /* no longer traced for calls (the daemon ignored or retargeted it):
             * a thread's stack must not keep it traced (its frames go by
             * decision, uncounted) */
            stacks.delete(&tid);
            return 0;
        }
        restart_if_stale(st, generation);
        return st;
    }
    if (!(is_target(pid, sp) & PROBE_CALLS))
        return 0;
    /* New target thread (or a recycled tid): start from an empty stack. */
    st = zero_stack.lookup(&zero);
    if (!st)
        return 0;
    if (stacks.update(&tid, st)) {
        stat_add(STAT_STACK_FULL);
        return 0;
    }
    st = stacks.lookup(&tid);
    if (st) {
        st->pid = pid;
        st->generation = generation;
    }
    return st;
}

/* The circuit breaker: count this probe hit; 1 if function probes must stop.
 * A fixed 10 ms window keeps it to one shared counter, with no timer. */
static __always_inline int breaker_blocks(struct breaker *b, struct config *c, __u64 now)
{
    if (b->state == BREAKER_OPEN) {
        stat_add(STAT_BREAKER_SKIPPED);
        return 1;
    }
    if (!c->breaker_limit)
        return 0;
    if (now - b->window_start_ns >= BREAKER_WINDOW_NS) {
        b->window_start_ns = now;  /* racy between CPUs: at worst a window restarts twice */
        b->count = 0;
    }
    __sync_fetch_and_add(&b->count, 1);
    if (b->count > c->breaker_limit) {
        b->tripped_count = b->count;
        b->tripped_after_ns = now - b->window_start_ns;
        b->opened_ns = now;
        b->state = BREAKER_OPEN;
        stat_add(STAT_BREAKER_SKIPPED);
        return 1;
    }
    return 0;
}

struct control {
    struct breaker *b;
    struct config *c;
};

static __always_inline int control_of(struct control *ctl)
{
    __u32 zero = 0;

    ctl->b = breaker.lookup(&zero);
    ctl->c = config.lookup(&zero);
    return ctl->b && ctl->c;
}

static __always_inline __u32 log2_bucket(__u64 v)
{
    __u32 r = 0;

    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r < SCOPE_HIST_BUCKETS ? r : SCOPE_HIST_BUCKETS - 1;
}

/* Where a call is counted: this CPU's aggregates of its function, or its
 * shared spill entry (``shared``: updated atomically). */
struct fref {
    struct fstat *fs;
    __u32 shared;
};

#define FADD(r, field, n) do {                              \
        if ((r)->shared)                                    \
            __sync_fetch_and_add(&(r)->fs->field, (n));     \
        else                                                \
            (r)->fs->field += (n);                          \
    } while (0)

/* A function's aggregates, created on first use (zeroed: min_ns 0 is "none",
 * as in the values the kernel zeroes for the other CPUs). Per-CPU memory is
 * allocated without waiting: a burst of new functions on a busy host can find
 * none (measured: 34 calls in one budgets test), and the call goes to the
 * preallocated spill map instead of being lost. 0 only when that is full. */
static __always_inline int fstat_of(__u32 func_id, struct fref *r)
{
    __u32 zero = 0;

    struct fstat *tmpl = zero_fstat.lookup(&zero);

    r->shared = 0;
#ifdef SPILL_EVERY
    /* tests: every SPILL_EVERY-th function as if per-CPU memory were short */
    if (!((func_id >> 8) % SPILL_EVERY))
        goto spill;
#endif
    r->fs = fstats.lookup(&func_id);
    if (r->fs)
        return 1;
    if (!tmpl)
        return 0;
    fstats.insert(&func_id, tmpl);  /* (or another CPU was first) */
    r->fs = fstats.lookup(&func_id);
    if (r->fs)
        return 1;
spill:
    r->shared = 1;
    r->fs = fstats_spill.lookup(&func_id);
    if (r->fs)
        return 1;
    if (!tmpl)
        return 0;
    fstats_spill.insert(&func_id, tmpl);  /* (another CPU may be first: fine) */
    r->fs = fstats_spill.lookup(&func_id);
    if (!r->fs) {
        stat_add(STAT_FSTAT_FAILED);
        return 0;
    }
    stat_add(STAT_FSTAT_SPILLED);
    return 1;
}

/* Exact aggregates: every completed call, whatever happens to its row. */
static __always_inline void count_call(struct fref *r, __u64 duration, __u64 self_ns,
                                       __u64 self_off_ns, __u64 self_gil_ns)
{
    struct fstat *fs = r->fs;

    FADD(r, count, 1);
    FADD(r, total_ns, duration);
    FADD(r, self_ns, self_ns);
    FADD(r, self_offcpu_ns, self_off_ns);
    FADD(r, self_gil_ns, self_gil_ns);
    /* (not atomic in a spill entry: two threads on two CPUs completing the
     * same function at once may leave one's extreme out). min_ns 0: none yet. */
    if (duration < fs->min_ns || !fs->min_ns)
        fs->min_ns = duration;
    if (duration > fs->max_ns)
        fs->max_ns = duration;
    FADD(r, hist[log2_bucket(duration) & (SCOPE_HIST_BUCKETS - 1)], 1);
}

/* A row guard over GUARD_WINDOW_NS windows: once ``limit`` rows went in t of
 * the window's W, 1 in 4 (W - t) / t of the rest is kept, which ends the
 * window near 1.25 times the limit, with weights no larger than that needs
 * (each row's k is the one it was drawn with, so sums stay unbiased whatever
 * k a window takes). The row's new k, or 0 if it is sampled out. */
static __always_inline __u32 guard(__u64 *window_ns, __u64 *rows, __u32 *window_k,
                                   __u64 limit, __u32 guard_k, __u32 k, __u64 duration,
                                   __u64 keep_ns, __u64 now)
{
    if (now - *window_ns >= GUARD_WINDOW_NS) {
        *window_ns = now;
        *rows = 0;
        *window_k = 0;
    }
    if (*rows >= limit) {
        __u32 wk = *window_k;
        if (!wk) {
            __u64 t = now - *window_ns;
            __u64 want = t ? 4 * (GUARD_WINDOW_NS - t) / t + 1 : guard_k;
            wk = want < 2 ? 2 : want > guard_k ? guard_k : want;
            *window_k = wk;
        }
        if (wk > k && duration < keep_ns) {
            /* keep with probability k / wk: the row then stands for wk calls */
            if (bpf_get_prandom_u32() % wk >= k)
                return 0;
            k = wk;
        }
    }
    __sync_fetch_and_add(rows, 1);
    return k;
}

/* Per-selector budgets (daemon): a target's group is in its mask's upper bits;
 * the group and each of its processes have a breaker and a row guard of their
 * own, decided here. */
struct budgets_of {
    struct budget *g;
    struct budget *p;
};

/* Returns the target's mask (0: not a target). */
static __always_inline __u32 budgets_find(__u32 pid, struct budgets_of *bc)
{
    __u32 *mask = targets.lookup(&pid);
    __u32 g;

    bc->g = 0;
    bc->p = 0;
    if (!mask)
        return 0;
    g = (*mask >> TARGET_GROUP_SHIFT) & (MAX_GROUPS - 1);
    if (!g)
        return *mask;
    bc->g = budgets.lookup(&g);
    if (!bc->g)
        return *mask;
    bc->p = proc_budgets.lookup(&pid);
    if (!bc->p && bc->g->proc_hit_limit | bc->g->proc_row_limit) {
        struct budget fresh = {};
        fresh.hit_limit = bc->g->proc_hit_limit;
        fresh.row_limit = bc->g->proc_row_limit;
        fresh.group = g;
        proc_budgets.insert(&pid, &fresh);
        bc->p = proc_budgets.lookup(&pid);
    }
    return *mask;
}

/* One budget's breaker: count this probe hit; 1 if it is open. It re-admits
 * on its own BUDGET_COOLDOWN_NS after tripping (epoch bumped: the shadow
 * stacks of its threads, which missed hits meanwhile, restart). */
static __always_inline int budget_blocks(struct budget *bu, struct budget *group, __u64 now)
{
    if (!bu || !bu->hit_limit)
        return 0;
    if (bu->state == BREAKER_OPEN) {
        if (now - bu->opened_ns < BUDGET_COOLDOWN_NS) {
            __sync_fetch_and_add(&bu->skipped, 1);
            if (group)  /* (a process's budget goes with it: its group keeps the sums) */
                __sync_fetch_and_add(&group->skipped, 1);
            stat_add(STAT_BUDGET_SKIPPED);
            return 1;
        }
        bu->state = BREAKER_CLOSED;
        bu->epoch++;
        bu->window_start_ns = now;
        bu->count = 0;
    }
    if (now - bu->window_start_ns >= BUDGET_WINDOW_NS) {
        bu->window_start_ns = now;  /* racy between CPUs: at worst a window restarts twice */
        bu->count = 0;
    }
    __sync_fetch_and_add(&bu->count, 1);
    if (bu->count > bu->hit_limit) {
        bu->state = BREAKER_OPEN;
        bu->opened_ns = now;
        __sync_fetch_and_add(&bu->trips, 1);
        __sync_fetch_and_add(&bu->skipped, 1);
        if (group) {  /* the group counts its processes' trips too */
            __sync_fetch_and_add(&group->trips, 1);
            __sync_fetch_and_add(&group->skipped, 1);
        }
        stat_add(STAT_BUDGET_SKIPPED);
        return 1;
    }
    return 0;
}

/* Both budgets of a probe hit of a target thread: the process's first, so that
 * a noisy process, once tripped, no longer counts against its selector's. */
static __always_inline int budgets_block(struct budgets_of *bc, __u64 now)
{
    return bc->g && (budget_blocks(bc->p, bc->g, now) || budget_blocks(bc->g, 0, now));
}

/* What a shadow stack must have been built in to be current: the host
 * breaker's generation plus the epochs of its process's budgets. */
static __always_inline __u32 stack_generation(struct control *ctl, struct budgets_of *bc)
{
    return ctl->b->generation + (bc->g ? bc->g->epoch : 0) + (bc->p ? bc->p->epoch : 0);
}

/* Whether a completed call becomes a row, and with which weight (0 = no). */
static __always_inline __u32 row_weight(__u32 k, __u32 tid, __u64 duration,
                                        __u64 now, struct control *ctl,
                                        struct budgets_of *bc)
{
    struct config *c = ctl->c;
    struct breaker *b = ctl->b;

    if (!k) {
        stat_add(STAT_FILTERED);
        return 0;
    }
    if (duration < c->min_duration_ns) {
        stat_add(STAT_SHORT);
        return 0;
    }
    if (c->tid_filter && !tids.lookup(&tid)) {
        stat_add(STAT_TID_FILTERED);
        return 0;
    }
    if (c->keep_ns && duration >= c->keep_ns)
        k = 1;  /* kept with probability 1: no noise from the slowest calls */
    if (k > 1 && bpf_get_prandom_u32() % k) {
        stat_add(STAT_SAMPLED_OUT);
        return 0;
    }
    if (c->row_limit) {
        /* The row guard: the controller's per-function k follows measured rates a
         * control interval late; between its decisions (a function turning hot)
         * rows over budget are sampled further here, weight kept unbiased. */
        k = guard(&b->rows_window_ns, &b->rows, &b->window_k, c->row_limit, c->guard_k,
                  k, duration, c->keep_ns, now);
        if (!k) {
            stat_add(STAT_GUARD_SAMPLED);
            return 0;
        }
    }
    for (int i = 0; i < 2; i++) {  /* the selector's guard, then the process's */
        struct budget *bu = i ? bc->p : bc->g;
        if (!bu || !bu->row_limit)
            continue;
        k = guard(&bu->rows_window_ns, &bu->rows, &bu->window_k, bu->row_limit, c->guard_k,
                  k, duration, c->keep_ns, now);
        if (!k) {
            __sync_fetch_and_add(&bu->sampled, 1);
            if (i && bc->g)
                __sync_fetch_and_add(&bc->g->sampled, 1);
            stat_add(STAT_BUDGET_SAMPLED);
            return 0;
        }
    }
    return k;
}

/* The id of the path `parent` -> function: a 64-bit mix (splitmix64's
 * finaliser), never 0, so equal paths get equal ids in every thread. */
static __always_inline __u64 path_of(__u64 parent, __u32 func_id)
{
    __u64 h = parent ^ ((__u64)func_id * 0x9e3779b97f4a7c15ULL);

    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h ? h : 1;
}

/* Tell the controller of a path the first time it is seen, before any row
 * that carries it can be sent (rows leave at return, after this push). */
static __always_inline __u32 announce(__u64 path, __u64 parent, __u32 func_id, __u32 pid,
                                      __u32 depth)
{
    __u8 one = 1;
    struct path_event *e;

    if (paths.lookup(&path))
        return 1;
    e = paths_rb.ringbuf_reserve(sizeof(*e));
    if (!e) {
        stat_add(STAT_PATHS_LOST);  /* not remembered: announced at its next call */
        return 0;
    }
    e->stack_id = path;
    e->parent_id = parent;
    e->func_id = func_id;
    e->pid = pid;
    e->depth = depth;
    e->pad = 0;
    paths_rb.ringbuf_submit(e, 0);
    paths.update(&path, &one);
    return 1;
}

static __always_inline void push_call(struct thread_stack *st, struct func_info fn, __u64 iframe)
{
    __u32 depth = st->depth;

    if (depth < SCOPE_MAX_DEPTH) {
        /* The mask keeps the verifier's bound through register spills. */
        struct frame *f = &st->frames[depth & (SCOPE_MAX_DEPTH - 1)];
        __u64 parent = 0;
        if (depth > 0)
            parent = st->frames[(depth - 1) & (SCOPE_MAX_DEPTH - 1)].path;
        __u64 path = fn.k == NOT_A_CALL ? parent : path_of(parent, fn.id);
        /* A loop calls the same function from the same place: the slot then still
         * holds this path, sent already, and the map lookup is saved. */
        if (fn.k != NOT_A_CALL && !(f->announced && f->path == path))
            f->announced = announce(path, parent, fn.id, st->pid, depth);
        f->path = path;  /* a non-call is no step of any path: its parent's */
        f->start_ns = bpf_ktime_get_ns();
        f->func_id = fn.id;
        f->k = fn.k;
        f->iframe = iframe;
        f->child_ns = 0;
        f->off_ns = 0;
        f->self_off_ns = 0;
        f->self_gil_ns = 0;
    } else if (fn.k != NOT_A_CALL) {
        /* No frame to time it with: counted now, at entry, as lost. */
        struct fref r;
        stat_add(STAT_DEEP);
        if (fstat_of(fn.id, &r)) {
            FADD(&r, count, 1);
            FADD(&r, lost, 1);
        }
    }
    st->depth = depth + 1;
}

/* A call that started but whose return never came (counted, as lost). */
static __always_inline void unsynced(struct frame *f)
{
    struct fref r;

    stat_add(STAT_UNSYNCED);
    if (f->k != NOT_A_CALL && fstat_of(f->func_id, &r)) {
        FADD(&r, count, 1);
        FADD(&r, lost, 1);
    }
}

#define SYNC_DEPTH 4  /* how far below the top a returning frame is looked for */
#define INLINE 1      /* iframe bit of a frame pushed inside a running eval loop (3.13) */

/* Which frame a return pops (pop_call's `mode`, with `iframe`): */
#define POP_MATCH 0   /* the frame `iframe` (3.15 probes), or the top if iframe is 0 */
#define POP_EVAL 1    /* an eval-function exit: the top activation, under any inline ones */
#define POP_INLINE 2  /* only a frame pushed inline: `iframe` if not 0, else the top one */

/* Pop the thread's top frame: count it, and if it becomes a row, take a slot
 * of the staging batch, which the caller completes (return line, flags) and
 * commits. With `iframe` (the probe tells which frame returns), only that
 * frame is popped: a return of a frame never entered as a call (3.15's
 * __init__ shim, frames running when tracing began) is not one, and frames
 * above it whose return never came go as lost. */
static __always_inline struct call_event *pop_call(__u64 now, __u32 tid, __u32 pid,
                                                   struct control *ctl, struct call_batch **b,
                                                   __u64 iframe, int mode)
{
    struct thread_stack *st = stacks.lookup(&tid);
    struct call_event *e;
    __u32 depth, weight;

    struct budgets_of bc;

    if (!st || st->pid != pid)
        return 0;
    if (!(budgets_find(pid, &bc) & PROBE_CALLS)) {
        stacks.delete(&tid);  /* no longer traced for calls (ignored, retargeted) */
        return 0;
    }
    if (budgets_block(&bc, now) || breaker_blocks(ctl->b, ctl->c, now))
        return 0;
    stat_add(STAT_RETURNS);
    restart_if_stale(st, stack_generation(ctl, &bc));
    depth = st->depth;
    if (depth == 0) {
        stat_add(STAT_UNMATCHED);
        return 0;
    }
    if (mode == POP_INLINE) {
        /* deeper than the shadow stack: nothing to compare; pops as usual */
        if (depth <= SCOPE_MAX_DEPTH) {
            __u64 top = st->frames[(depth - 1) & (SCOPE_MAX_DEPTH - 1)].iframe;
            if (!(top & INLINE) || (iframe && top != (iframe | INLINE)))
                return 0;
        }
    } else if (mode == POP_EVAL && depth <= SCOPE_MAX_DEPTH) {
        /* inline frames whose end was not seen (an exception path) end with it */
        for (__u32 i = 0; i < SYNC_DEPTH; i++) {
            __u32 top = depth - 1;
            asm volatile("" : "+r"(top));  /* keeps the mask below in the program */
            struct frame *f = &st->frames[top & (SCOPE_MAX_DEPTH - 1)];
            if (depth <= 1 || !(f->iframe & INLINE))
                break;
            unsynced(f);
            depth--;
        }
    } else if (iframe && depth <= SCOPE_MAX_DEPTH) {
        __u32 skip = SYNC_DEPTH;
        for (__u32 i = 0; i < SYNC_DEPTH; i++) {
            if (i < depth && st->frames[(depth - 1 - i) & (SCOPE_MAX_DEPTH - 1)].iframe == iframe) {
                skip = i;
                break;
            }
        }
        if (skip == SYNC_DEPTH) {
            stat_add(STAT_UNMATCHED);
            return 0;
        }
        for (__u32 i = 0; i < SYNC_DEPTH; i++) {
            if (i >= skip)
                break;
            unsynced(&st->frames[(depth - 1 - i) & (SCOPE_MAX_DEPTH - 1)]);
        }
        depth -= skip;
    }
    depth--;
    st->depth = depth;
    if (depth >= SCOPE_MAX_DEPTH)
        return 0;
    asm volatile("" : "+r"(depth));  /* keeps the mask below in the program */
    struct frame *f = &st->frames[depth & (SCOPE_MAX_DEPTH - 1)];
    __u64 start_ns = f->start_ns;
    __u32 func_id = f->func_id;
    __u32 k = f->k;
    if (k == NOT_A_CALL)
        return 0;
    __u64 duration = now - start_ns;
    __u64 off_ns = f->off_ns, self_off_ns = f->self_off_ns, self_gil_ns = f->self_gil_ns;
    __u64 self_ns = duration > f->child_ns ? duration - f->child_ns : 0;
    if (self_off_ns > self_ns)
        self_off_ns = self_ns;  /* clock edges: never more off-CPU than wall */
    if (self_gil_ns > self_off_ns)
        self_gil_ns = self_off_ns;
    if (off_ns > duration)
        off_ns = duration;
    if (depth > 0) {
        /* the parent's self time is what its children leave of its duration */
        struct frame *p = &st->frames[(depth - 1) & (SCOPE_MAX_DEPTH - 1)];
        p->child_ns += duration;
        p->off_ns += off_ns;
    }
    struct fref r;
    int counted = fstat_of(func_id, &r);
    if (counted)
        count_call(&r, duration, self_ns, self_off_ns, self_gil_ns);
    weight = row_weight(k, tid, duration, now, ctl, &bc);
    if (!weight) {
        if (counted)
            FADD(&r, dropped, 1);
        return 0;
    }
    *b = stage();  /* looked up only for a call that becomes a row */
    if (!*b)
        return 0;
    e = stage_slot(*b, now);
    e->start_ns = start_ns;
    e->duration_ns = duration;
    e->pid = pid;
    e->tid = tid;
    e->func_id = func_id;
    e->return_line = 0;
    e->depth = depth;
    e->flags = 0;
    e->weight = weight;
    e->stack_id = f->path;
    e->self_ns = self_ns;
    e->offcpu_ns = off_ns;
    e->self_offcpu_ns = self_off_ns;
    e->self_gil_ns = self_gil_ns;
    return e;
}

/* The start both entry programs share: the thread's shadow stack if the
 * process is traced and the breaker lets the call in, else 0. */
static __always_inline struct thread_stack *entering(struct probe_spec *sp, __u32 tid,
                                                     __u32 pid)
{
    struct thread_stack *st;
    struct control ctl;

    if (!sp || !control_of(&ctl))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    struct budgets_of bc;

    __u32 mask = budgets_find(pid, &bc);
    st = stack_of(tid, pid, sp, stack_generation(&ctl, &bc), mask);  /* 0: not a target */
    /* its own budgets first: the host's breaker (the last resort, which
     * detaches everything) counts only what they admit */
    if (!st || budgets_block(&bc, now) || breaker_blocks(ctl.b, ctl.c, now))
        return 0;
    restart_if_stale(st, stack_generation(&ctl, &bc));  /* (re-admitted just now) */
    stat_add(STAT_ENTRIES);
    return st;
}

/* The start both return programs share: the completed call's record, or 0. */
static __always_inline struct call_event *returning(struct call_batch **b, __u64 *now,
                                                    __u64 iframe, int mode)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct control ctl;

    *now = bpf_ktime_get_ns();
    if (!control_of(&ctl))
        return 0;
    return pop_call(*now, id, id >> 32, &ctl, b, iframe, mode);
}

/* The frame a function probe fired for, where this build's probe site keeps
 * it in a register (found by disassembly); 0 if unknown. */
static __always_inline __u64 probe_frame(struct pt_regs *ctx, struct probe_spec *sp)
{
    return sp && sp->frame_reg ? reg_value(ctx, sp->frame_reg - 1) : 0;
}

/* Whether a generator-like code's frame is being created (RETURN_GENERATOR
 * runs before the generator owns it) rather than resumed: not a call. */
static __always_inline int creating(struct pt_regs *ctx, __u64 iframe)
{
    __u32 idx = bpf_get_attach_cookie(ctx);
    struct frame_offsets *fo = frame_offs.lookup(&idx);
    __u8 owner = FRAME_OWNED_BY_GENERATOR;

    if (!fo || !fo->frame_owner || !iframe)
        return 0;
    bpf_probe_read_user(&owner, 1, (void *)(iframe + fo->frame_owner));
    return owner != FRAME_OWNED_BY_GENERATOR;
}

/* co_firstlineno of the code a frame runs: where the entry probe has no line
 * (3.15 passes -1 for code that starts by creating cells), two functions of
 * one name in one file would share an interning key without it. */
static __always_inline __s32 frame_first_line(struct pt_regs *ctx, __u64 iframe)
{
    __u32 idx = bpf_get_attach_cookie(ctx);
    struct frame_offsets *fo = frame_offs.lookup(&idx);
    __u64 code = 0, word = 0;

    if (!fo || !fo->code_base)
        return -1;
    bpf_probe_read_user(&code, 8, (void *)(iframe + fo->frame_executable));
    code &= fo->executable_mask;
    if (!code || bpf_probe_read_user(&word, 8, (void *)(code + fo->code_base
                                                      + 8 * (fo->line_word & 7))))
        return -1;
    return word >> (fo->line_shift & 32);
}

/* The function a frame runs (the eval-function path). */
static __always_inline struct func_info frame_func(__u32 pid, __u64 frame,
                                                   struct frame_offsets *fo)
{
    __u64 code = 0;

    bpf_probe_read_user(&code, 8, (void *)(frame + fo->frame_executable));
    return intern_code(pid, code & fo->executable_mask, fo);
}

int on_entry(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct probe_spec *sp = spec_of(ctx);
    struct thread_stack *st = entering(sp, tid, pid);

    if (!st)
        return 0;
    __u64 file = ARG(ctx, sp, 0);
    __u64 name = ARG(ctx, sp, 1);
    __s32 line = ARG(ctx, sp, 2);
    __u64 iframe = probe_frame(ctx, sp);
    if (line < 0 && iframe)
        line = frame_first_line(ctx, iframe);  /* -1: code starting with a cell setup */
    struct func_info fn = intern(ctx, pid, file, name, line, iframe);
    if ((fn.flags & FINFO_GENLIKE) && creating(ctx, iframe)) {
        stat_add(STAT_CREATED);  /* 3.15 fires the entry probe, never a return */
        return 0;
    }
    push_call(st, fn, iframe);
    return 0;
}

int on_return(struct pt_regs *ctx)
{
    struct call_batch *b;
    __u64 now;
    struct probe_spec *sp = spec_of(ctx);
    struct call_event *e = returning(&b, &now, probe_frame(ctx, sp), POP_MATCH);

    if (!e)
        return 0;
    e->return_line = sp ? ARG(ctx, sp, 2) : 0;
    stage_commit(b, now);
    return 0;
}

/* _PyEval_EvalFrameDefault(tstate, frame, throwflag) runs a Python frame that
 * C started or resumed. 3.13/3.14 have no function probes: with the perf
 * trampoline on (-X perf) every Python call enters it, and on_eval_return,
 * a plain uprobe on each of its exits (found by disassembly), pops. 3.15 fires its entry probe for
 * every start and resume but a throw() into a generator: this program serves
 * those (SPEC_THROW_ONLY), and the function__return probe pops them. */
int on_eval_entry(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct probe_spec *sp = spec_of(ctx);
    struct frame_offsets *fo;
    __u32 idx = bpf_get_attach_cookie(ctx);

    if (!sp || ((sp->flags & SPEC_THROW_ONLY) && !ARG(ctx, sp, 1)))
        return 0;
    struct thread_stack *st = entering(sp, tid, pid);
    if (!st)
        return 0;
    fo = frame_offs.lookup(&idx);
    if (!fo)
        return 0;
    __u64 frame = ARG(ctx, sp, 0);
    struct func_info fn = frame_func(pid, frame, fo);
    if ((fn.flags & FINFO_GENLIKE) && creating(ctx, frame)) {
        stat_add(STAT_CREATED);
        fn.k = NOT_A_CALL;  /* its exit still comes: keep the pairs */
    }
    push_call(st, fn, frame);
    return 0;
}

/* Whether the conditional branch a probe sits on is about to go the way that
 * leaves the eval function (codes from interpreters/disasm.py's _JCC). */
static __always_inline int branch_taken(__u64 fl, __u8 cond)
{
    __u64 zf = (fl >> 6) & 1, sf = (fl >> 7) & 1, of = (fl >> 11) & 1;
    __u64 r;

    switch (cond >> 1) {
    case 1: r = zf; break;
    case 2: r = sf; break;
    case 3: r = of; break;
    case 4: r = (fl >> 2) & 1; break;
    case 5: r = fl & 1; break;
    case 6: r = (fl & 1) | zf; break;
    case 7: r = sf != of; break;
    case 8: r = zf | (sf != of); break;
    default: return 1;
    }
    return (cond & 1) ? !r : r;
}

/* A return the eval-function path sees (no return line there). */
static __always_inline int eval_pop(__u64 iframe, int mode)
{
    struct call_batch *b;
    __u64 now;
    struct call_event *e = returning(&b, &now, iframe, mode);

    if (!e)
        return 0;
    e->flags = CALL_NO_RETURN_LINE;
    stage_commit(b, now);
    return 0;
}

int on_eval_return(struct pt_regs *ctx)
{
    struct probe_spec *sp = spec_of(ctx);

    if (!sp || (sp->exit_cond && !branch_taken(ctx->flags, sp->exit_cond)))
        return 0;
    return eval_pop(0, POP_EVAL);
}

/* 3.13: CALL_ALLOC_AND_ENTER_INIT pushes __init__'s frame inside the running
 * eval loop (see interpreters/disasm.py InlineInit): the loop's frame
 * register holds it at the jump to start_frame. */
int on_inline_push(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct probe_spec *sp = spec_of(ctx);
    __u32 idx = bpf_get_attach_cookie(ctx);

    struct thread_stack *st = entering(sp, tid, pid);
    struct frame_offsets *fo = frame_offs.lookup(&idx);
    if (!st || !fo)
        return 0;
    __u64 frame = probe_frame(ctx, sp);
    push_call(st, frame_func(pid, frame, fo), frame | INLINE);
    return 0;
}

/* EXIT_INIT_CHECK: the inline __init__ frame has returned. */
int on_inline_return(struct pt_regs *ctx)
{
    return eval_pop(0, POP_INLINE);
}

/* exit_unwind frees each frame an exception leaves: an inline one ends here. */
int on_inline_unwind(struct pt_regs *ctx)
{
    struct probe_spec *sp = spec_of(ctx);

    return sp ? eval_pop(ARG(ctx, sp, 0), POP_INLINE) : 0;
}

/* The GIL's condition wait (interpreters/gil.py): entered at the call of
 * pthread_cond_timedwait in take_gil(), left at the instruction after it.
 * sched_switch names the off-CPU intervals of a thread in between 'gil'. */
int on_gil_wait(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, one = 1;

    if (is_target(id >> 32, spec_of(ctx)) & PROBE_SCHED)
        gil_waits.update(&tid, &one);
    return 0;
}

int on_gil_done(struct pt_regs *ctx)
{
    __u32 tid = bpf_get_current_pid_tgid();

    gil_waits.delete(&tid);
    return 0;
}

#ifdef SCOPE_STACKS
#include "stacks.bpf.c"
#else
static __always_inline __u64 event_stack(__u32 pid, __u32 tid, __u32 mask) { return 0; }
#endif

int on_gc_start(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct probe_spec *sp;
    struct gc_state s = {};

    sp = spec_of(ctx);
    if (!sp || !(is_target(pid, sp) & PROBE_GC))
        return 0;
    s.start_ns = bpf_ktime_get_ns();
    s.generation = ARG(ctx, sp, 0);
    s.stack_id = event_stack(pid, tid, is_target(pid, sp));
    gc_states.update(&tid, &s);
    return 0;
}

int on_gc_done(struct pt_regs *ctx)
{
    __u64 now = bpf_ktime_get_ns();
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct gc_state *s = gc_states.lookup(&tid);
    struct probe_spec *sp;
    struct gc_event *e;

    if (!s)
        return 0;
    sp = spec_of(ctx);
    stat_add(STAT_GC);
    e = gc_rb.ringbuf_reserve(sizeof(*e));
    if (!e) {
        stat_add(STAT_GC_LOST);
        gc_states.delete(&tid);
        return 0;
    }
    e->start_ns = s->start_ns;
    e->duration_ns = now - s->start_ns;
    e->generation = s->generation;
    e->collected = sp ? ARG(ctx, sp, 0) : -1;
    e->stack_id = s->stack_id;
    e->pid = pid;
    e->tid = tid;
    e->pad = 0;
    gc_rb.ringbuf_submit(e, 0);
    gc_states.delete(&tid);
    return 0;
}

int on_import_start(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct probe_spec *sp = spec_of(ctx);
    struct import_stack *st;

    if (!sp || !(is_target(pid, sp) & PROBE_IMPORTS))
        return 0;
    st = imports.lookup(&tid);
    if (!st) {
        struct import_stack empty = {};
        imports.update(&tid, &empty);
        st = imports.lookup(&tid);
        if (!st)
            return 0;
    }
    if (st->depth < SCOPE_IMPORT_DEPTH)
        st->start_ns[st->depth & (SCOPE_IMPORT_DEPTH - 1)] = bpf_ktime_get_ns();
    st->depth++;
    return 0;
}

int on_import_done(struct pt_regs *ctx)
{
    __u64 now = bpf_ktime_get_ns();
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct import_stack *st = imports.lookup(&tid);
    struct probe_spec *sp;
    struct import_event *e;
    __u32 depth;

    if (!st || st->depth == 0)
        return 0;
    depth = --st->depth;
    if (depth >= SCOPE_IMPORT_DEPTH)
        return 0;
    __u64 start_ns = st->start_ns[depth & (SCOPE_IMPORT_DEPTH - 1)];
    sp = spec_of(ctx);
    if (!sp)
        return 0;
    stat_add(STAT_IMPORTS);
    e = imports_rb.ringbuf_reserve(sizeof(*e));
    if (!e) {
        stat_add(STAT_IMPORTS_LOST);
        return 0;
    }
    e->start_ns = start_ns;
    e->duration_ns = now - start_ns;
    e->pid = pid;
    e->tid = tid;
    e->depth = depth;
    e->found = ARG(ctx, sp, 1);
    __u64 name = ARG(ctx, sp, 0);
    e->module[0] = 0;
    if (name)
        bpf_probe_read_user_str(e->module, sizeof(e->module), (void *)name);
    imports_rb.ringbuf_submit(e, 0);
    return 0;
}

int on_audit(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct probe_spec *sp = spec_of(ctx);
    struct audit_event *e;

    if (!sp || !(is_target(pid, sp) & PROBE_AUDIT))
        return 0;
    stat_add(STAT_AUDIT);
    e = audit_rb.ringbuf_reserve(sizeof(*e));
    if (!e) {
        stat_add(STAT_AUDIT_LOST);
        return 0;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->pid = pid;
    e->tid = tid;
    e->stack_id = 0;
    __u64 name = ARG(ctx, sp, 0);
    e->event[0] = 0;
    if (name)
        bpf_probe_read_user_str(e->event, sizeof(e->event), (void *)name);
    /* after the name: the walk may send the stack first (the ring's order) */
    e->stack_id = event_stack(pid, tid, is_target(pid, sp));
    audit_rb.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    __u64 now = bpf_ktime_get_ns();
    __u32 pid = bpf_get_current_pid_tgid() >> 32;
    __u32 prev = args->prev_pid, next = args->next_pid;
    struct call_batch *b = stage();
    struct offcpu_state *o;
    struct sched_event *e;
    __u32 *mask;

    if (b)
        flush_calls(b);  /* the thread whose calls these are leaves this CPU */
    if (prev && (mask = targets.lookup(&pid))) {
        struct thread_stack *st = stacks.lookup(&prev);
        /* the GIL probes are attached with the sched set only */
        __u32 gil = (*mask & PROBE_SCHED) && gil_waits.lookup(&prev);
        if (st && st->pid == pid) {
            st->off_since = now;  /* its calls' off-CPU time starts */
            st->off_gil = gil;
        }
        if (*mask & PROBE_SCHED) {
            struct offcpu_state s = {.off_ns = now, .prev_state = args->prev_state, .pid = pid,
                                     .gil = gil};
            if (st && st->depth > 0 && st->depth <= SCOPE_MAX_DEPTH)
                s.func_id = st->frames[(st->depth - 1) & (SCOPE_MAX_DEPTH - 1)].func_id;
#ifdef SCOPE_STACKS
            /* prev is the current task: its memory is readable. Preemptions are
             * not walked (counted): the thread was running, the CPU samples have it. */
            if (*mask & PROBE_STACKS) {
                __s64 ps = args->prev_state;
                if (ps == 0 || ps >= 0x100)
                    stat_add(STAT_OFFCPU_UNWALKED);
                else
                    s.stack_id = offcpu_stack(pid, prev, now);
            }
#endif
            offcpu.update(&prev, &s);
        }
    }
    if (next) {
        struct thread_stack *st = stacks.lookup(&next);
        if (st && st->off_since) {
            /* Python ran nothing meanwhile: the whole interval is the top frame's */
            __u32 depth = st->depth;
            if (depth > 0 && depth <= SCOPE_MAX_DEPTH) {
                struct frame *f = &st->frames[(depth - 1) & (SCOPE_MAX_DEPTH - 1)];
                f->off_ns += now - st->off_since;
                f->self_off_ns += now - st->off_since;
                if (st->off_gil)
                    f->self_gil_ns += now - st->off_since;
            }
            st->off_since = 0;
        }
    }
    o = offcpu.lookup(&next);
    if (!o)
        return 0;
    stat_add(STAT_SCHED);
    e = sched_rb.ringbuf_reserve(sizeof(*e));
    if (e) {
        e->start_ns = o->off_ns;
        e->duration_ns = now - o->off_ns;
        e->runq_ns = now - (o->wake_ns ? o->wake_ns : o->off_ns);
        e->prev_state = o->prev_state;
        e->pid = o->pid;
        e->tid = next;
        e->func_id = o->func_id;
        e->woken = o->wake_ns != 0;
        e->gil = o->gil;
        e->stack_id = o->stack_id;
        sched_rb.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    } else {
        stat_add(STAT_SCHED_LOST);
    }
    offcpu.delete(&next);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    __u32 tid = args->pid;
    struct offcpu_state *o = offcpu.lookup(&tid);

    if (o && !o->wake_ns)
        o->wake_ns = bpf_ktime_get_ns();
    return 0;
}

/* task_newtask tells a new process from a new thread (clone flags), which
 * sched_process_fork does not. Children of targets become targets. */
TRACEPOINT_PROBE(task, task_newtask)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32, child = args->pid;
    __u32 *mask = targets.lookup(&pid);
    __u8 one = 1;

    if (!mask) {
        /* a child of a process the daemon ignores runs the same program */
        if (!(args->clone_flags & 0x00010000) && ignored.lookup(&pid))
            ignored.update(&child, &one);
        return 0;
    }
    if (args->clone_flags & 0x00010000 /* CLONE_THREAD */) {
        proc_event(PROC_THREAD, pid, tid, child);
        return 0;
    }
    targets.update(&child, mask);  /* with the parent's probe sets */
    proc_budgets.delete(&child);   /* (an exited process's of this pid) */
    proc_event(PROC_FORK, pid, tid, child);
    return 0;
}

/* A target thread renamed (prctl PR_SET_NAME, pthread_setname_np; CPython
 * 3.14+ names each threading.Thread so): caught here, as it happens, so a
 * short-lived thread's name is known too. The renamer may be another thread
 * of the process (/proc/self/task/TID/comm), so args->pid is the renamed one. */
TRACEPOINT_PROBE(task, task_rename)
{
    __u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct proc_event *e;

    if (!targets.lookup(&pid))
        return 0;
    e = proc_reserve(PROC_RENAME, pid, args->pid, args->pid);
    if (!e)
        return 0;
    __builtin_memcpy(e->comm, args->newcomm, sizeof(args->newcomm));
    proc_rb.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    __u32 pid = bpf_get_current_pid_tgid() >> 32, zero = 0;
    struct config *c = config.lookup(&zero);
    struct proc_event *e;

    /* The daemon hears of every exec: it decides in user space (globs,
     * regexes, users, cgroups) whether the new program becomes a target. A
     * new program of a process it ignored is decided afresh. */
    __u32 target = targets.lookup(&pid) != 0;

    if (!target && !(c && c->watch_exec))
        return 0;
    ignored.delete(&pid);
    e = proc_reserve(PROC_EXEC, pid, args->pid, args->old_pid);
    if (!e)
        return 0;
    bpf_probe_read_kernel_str(e->filename, sizeof(e->filename),
                              (void *)args + (args->data_loc_filename & 0xFFFF));
    /* the host's execs wake no one: they wait for the next poll (an adoption,
     * which must be decided promptly, wakes the daemon) */
    proc_rb.ringbuf_submit(e, target ? 0 : BPF_RB_NO_WAKEUP);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    __u64 now = bpf_ktime_get_ns();
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = id, pid = id >> 32;
    struct thread_stack *st;

    if (!targets.lookup(&pid)) {
        if (tid == pid)
            ignored.delete(&pid);  /* its pid may be reused by anyone */
        return 0;
    }
    st = stacks.lookup(&tid);
    if (st && st->pid == pid) {
        /* Calls still open when the thread dies (os._exit, a signal): the
         * controller writes them as open calls rather than lose them (a loop
         * over 1024 frames here is more than the verifier takes). */
        stat_add_n(STAT_OPEN_AT_EXIT, st->depth < SCOPE_MAX_DEPTH ? st->depth : SCOPE_MAX_DEPTH);
        if (st->depth)
            exited_stacks.update(&tid, st);
        stacks.delete(&tid);
    }
    offcpu.delete(&tid);
    gil_waits.delete(&tid);
    gc_states.delete(&tid);
    imports.delete(&tid);
#ifdef SCOPE_STACKS
    tstates.delete(&tid);
    offcpu_walked.delete(&tid);
    if (tid == pid)
        stack_offs.delete(&pid);
#endif
    if (tid == pid) {
        /* (its proc_budgets entry stays: user space reads its last trips,
         * then deletes it; a new process of this pid starts afresh) */
        proc_event(PROC_EXIT, pid, tid, 0);
        /* Its pid may be reused by anyone: and exe mode adopts processes for
         * as long as it runs, so the set must not fill with the dead. */
        targets.delete(&pid);
    }
    return 0;
}
