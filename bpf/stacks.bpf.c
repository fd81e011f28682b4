/* scope-ebpf: sampled Python stacks (the `stacks` probe set).
 *
 * Included at the end of scope.bpf.c when compiled with -DSCOPE_STACKS (only
 * sessions that select the set pay for compiling it). `on_sample` runs on a
 * software cpu-clock perf event per CPU; for a thread of a target traced with
 * PROBE_STACKS it finds the thread's PyThreadState, walks its Python frames
 * and records each frame's code object and instruction, which user space
 * resolves to function, file and line (interpreters/layouts). A stack is sent
 * once (the `sampled` LRU remembers it); each sample is one small record.
 *
 * Finding the thread state without kernel structs: `tstates` (tid -> tstate),
 * filled by the controller from the target's memory; where the interpreter
 * keeps the kernel tid in the thread state (3.11+) an entry is checked
 * against it, and a missing or stale one is found by walking the
 * interpreter's thread list here (then cached in `tstates`).
 */
#include <uapi/linux/bpf_perf_event.h>

#ifndef MAX_STACKS
#define MAX_STACKS 65536
#endif
#ifndef SAMPLES_RB_PAGES
#define SAMPLES_RB_PAGES 256   /* 1 MiB: 32k samples */
#endif
#ifndef PYSTACKS_RB_PAGES
#define PYSTACKS_RB_PAGES 512  /* 2 MiB: about 1,000 new stacks between two drains */
#endif

#define FRAME_BUF 128          /* bytes of a frame read per frame (stack_offsets.frame_size):
                                * one read of just the span of the fields used */
#define FRAME_CHUNK 8192       /* reads are shorter: a page plus a frame at most. A read
                                * costs ~100 ns whatever its size up to a few KB (measured),
                                * and a 3.11+ frame's callers sit just below it in memory */

BPF_HASH(stack_offs, __u32, struct stack_offsets, MAX_TARGETS);  /* pid -> its layout */
BPF_HASH(tstates, __u32, struct tstate_entry, MAX_THREADS);     /* tid -> PyThreadState */
/* stacks already sent on pystacks_rb: forgotten least recently used first, and
 * sent again when seen again (user space keeps one row per stack) */
BPF_TABLE("lru_hash", __u64, __u8, sampled, MAX_STACKS);
struct walk_budget {
    __u64 since;             /* when the budget was last topped up */
    __u64 walks;             /* walks left */
};
BPF_HASH(offcpu_walked, __u32, struct walk_budget, MAX_THREADS); /* tid -> off-CPU walks */
BPF_RINGBUF_OUTPUT(samples_rb, SAMPLES_RB_PAGES);
BPF_RINGBUF_OUTPUT(pystacks_rb, PYSTACKS_RB_PAGES);

/* Per-CPU state of one walk. The loops keep their state here, not in
 * registers: to the verifier every value read back is then just a number, so
 * the paths through one iteration meet again at the next (bcc cannot load
 * bpf_loop callbacks; bounded loops are verified one iteration at a time). */
struct walk_scratch {
    struct pystack_event ev;
    __u64 cur;               /* the next frame (or thread state) to read; 0 at the end */
    __u64 hash;
    __u64 found;             /* the thread walk's result */
    __u64 base, end;         /* the user addresses frame[] holds now */
    __u32 n;                 /* frames recorded */
    __u32 missing;           /* frames counted past them */
    __u8 frame[FRAME_CHUNK + FRAME_BUF];
};
BPF_PERCPU_ARRAY(walk_scratch, struct walk_scratch, 1);

static __always_inline __u64 mix64(__u64 h)
{
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

static __always_inline __u64 read_u64(__u64 addr)
{
    __u64 v = 0;

    if (bpf_probe_read_user(&v, sizeof(v), (void *)addr))
        return 0;
    return v;
}

/* The thread's PyThreadState: the cached one if it still names this thread,
 * else (3.11+) found in the interpreter's thread list and cached. 0 if none. */
static __always_inline __u64 find_tstate(__u32 pid, __u32 tid, struct stack_offsets *so,
                                         struct walk_scratch *s)
{
    struct tstate_entry *te = tstates.lookup(&tid);
    __u64 native = 0;

    if (te && te->pid == pid && !(so->flags & SO_WALK_ALWAYS)) {
        if (so->tstate_native_tid < 0)
            return te->tstate;  /* 3.8-3.10: the controller's word (it keeps it current) */
        if (!bpf_probe_read_user(&native, sizeof(native),
                                 (void *)(te->tstate + so->tstate_native_tid)) && native == tid)
            return te->tstate;
    }
    if (so->tstate_native_tid < 0 || !so->runtime)
        return 0;
    stat_add(STAT_TSTATE_WALKS);
    __u64 interp = read_u64(so->runtime + so->interp_head);

    if (!interp)
        return 0;
    s->cur = read_u64(interp + so->threads_head);
    s->found = 0;
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < SCOPE_THREAD_WALK; i++) {
        __u64 t = s->cur;
        if (!t)
            break;
        native = 0;
        if (bpf_probe_read_user(&native, sizeof(native), (void *)(t + so->tstate_native_tid)))
            break;
        if (native == tid) {
            s->found = t;
            break;
        }
        s->cur = read_u64(t + so->tstate_next);
    }
    if (s->found) {
        struct tstate_entry e = {.tstate = s->found, .pid = pid};
        tstates.update(&tid, &e);
    }
    return s->found;
}

/* The frame at user address f as bytes in s->frame (its fields at the frame_*
 * offsets), read now unless the last read holds it; NULL if it cannot be read.
 * A read starts at lo & chunk_mask: for 3.11+ the start of the frame's page
 * (its callers usually sit just below it, and a page the frame is on cannot
 * fail to read), else the frame itself. Few branches: the verifier walks each
 * of them in every iteration of the loops below. */
static __always_inline __u8 *frame_at(struct stack_offsets *so, struct walk_scratch *s, __u64 f)
{
    __u64 lo = f + so->frame_lo, start;
    __u32 len;

    if (lo - s->base > s->end - s->base - so->frame_size) {
        start = lo & so->chunk_mask;
        len = (lo + so->frame_size - start) & (FRAME_CHUNK - 1);
        if (bpf_probe_read_user(s->frame, len, (void *)start))
            return 0;
        s->base = start;
        s->end = start + len;
    }
    return s->frame + ((lo - s->base) & (FRAME_CHUNK - 1));
}

/* Walk the frames from s->cur outwards: the first SCOPE_STACK_FRAMES Python
 * frames into s->ev.frames (s->n), then up to SCOPE_STACK_COUNT more counted
 * (s->missing). Two loops: the verifier walks every iteration of each, and
 * the counting one has few branches to walk. */
static __always_inline void walk_frames(struct stack_offsets *so, struct walk_scratch *s)
{
    s->base = ~0ULL;  /* empty: only lo == ~0 would be found in it */
    s->end = s->base + so->frame_size;
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < SCOPE_STACK_FRAMES + SCOPE_STACK_FRAMES / 2; i++) {
        __u64 code, instr;
        __u32 n = s->n;
        __u8 *fr;

        if (!s->cur || n >= SCOPE_STACK_FRAMES)
            break;
        fr = frame_at(so, s, s->cur);
        if (!fr) {
            s->cur = 0;  /* memory that is not (or no longer) a frame: the stack ends */
            break;
        }
        s->cur = *(__u64 *)(fr + (so->frame_previous & 0x78));
        if (fr[so->frame_owner & 0x7f] >= so->owner_skip)
            continue;  /* a C-stack shim or the interpreter's base frame */
        code = *(__u64 *)(fr + (so->frame_code & 0x78)) & so->code_mask;
        if (so->flags & SO_INSTR_INT)
            instr = (__u64)(__s64)*(__s32 *)(fr + (so->frame_instr & 0x7c));
        else
            instr = *(__u64 *)(fr + (so->frame_instr & 0x78));
        struct stack_frame *sf = &s->ev.frames[n & (SCOPE_STACK_FRAMES - 1)];
        sf->code = code;
        sf->instr = instr;
        s->hash = mix64(mix64(s->hash ^ code) ^ (instr * 0x9e3779b97f4a7c15ULL));
        s->n = n + 1;
    }
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < SCOPE_STACK_COUNT; i++) {
        __u8 *fr;

        if (!s->cur)
            break;
        fr = frame_at(so, s, s->cur);
        if (!fr) {
            s->cur = 0;
            break;
        }
        s->cur = *(__u64 *)(fr + (so->frame_previous & 0x78));
        s->missing += fr[so->frame_owner & 0x7f] < so->owner_skip;
    }
}

/* Walk the current thread's Python stack and send it on pystacks_rb unless
 * sent before: its kernel id, or 0 with *why = STAT_SAMPLES_NO_THREAD (its
 * thread state is not known) or STAT_SAMPLES_EMPTY (no Python frame).
 * s->missing and s->cur (not 0: the count was cut) tell whether it is truncated. */
static __always_inline __u64 take_stack(__u32 pid, __u32 tid, struct stack_offsets *so,
                                        struct walk_scratch *s, __u32 *why)
{
    __u64 tstate, frame, stack_id;

    s->n = 0;
    s->missing = 0;
    s->cur = 0;
    tstate = find_tstate(pid, tid, so, s);
    if (!tstate) {
        *why = STAT_SAMPLES_NO_THREAD;
        return 0;
    }
    frame = read_u64(tstate + so->tstate_frame);
    if (frame && so->cframe_frame >= 0)
        frame = read_u64(frame + so->cframe_frame);  /* 3.11-3.12: via the _PyCFrame */
    s->cur = frame;
    s->hash = mix64(pid + 0x51ac4ed5ULL);
    walk_frames(so, s);
    if (!s->n) {
        *why = STAT_SAMPLES_EMPTY;
        return 0;
    }
    stack_id = s->hash ? s->hash : 1;
    if (!sampled.lookup(&stack_id)) {
        __u8 one = 1;

        s->ev.stack_id = stack_id;
        s->ev.pid = pid;
        s->ev.depth = s->n;
        s->ev.missing = s->missing;
        s->ev.flags = s->cur ? STACK_COUNT_CUT : 0;
        if (pystacks_rb.ringbuf_output(&s->ev, sizeof(s->ev), 0))
            stat_add(STAT_STACKS_LOST);  /* not remembered: sent at its next sample */
        else
            sampled.update(&stack_id, &one);
    }
    return stack_id;
}

/* The stack of a target thread (stacks set) at an event (gc__start, audit, a
 * switch off the CPU): its kernel id, 0 if none. */
static __always_inline __u64 current_stack(__u32 pid, __u32 tid)
{
    __u32 zero = 0, why = 0;
    struct stack_offsets *so = stack_offs.lookup(&pid);
    struct walk_scratch *s = walk_scratch.lookup(&zero);

    if (!so || !s)
        return 0;
    return take_stack(pid, tid, so, s, &why);
}

static __always_inline __u64 event_stack(__u32 pid, __u32 tid, __u32 mask)
{
    if (!(mask & PROBE_STACKS))
        return 0;
    stat_add(STAT_EVENT_STACKS);
    return current_stack(pid, tid);
}

/* At a switch of a target thread that blocks: a budget per thread of one walk
 * per SCOPE_OFFCPU_WALK_NS, SCOPE_OFFCPU_BURST saved (a thread that blocks 100k
 * times a second costs 1k walks; one that blocks now and then, none missed). */
static __always_inline __u64 offcpu_stack(__u32 pid, __u32 tid, __u64 now)
{
    struct walk_budget *b = offcpu_walked.lookup(&tid);

    if (!b) {
        struct walk_budget fresh = {.since = now, .walks = SCOPE_OFFCPU_BURST};
        offcpu_walked.update(&tid, &fresh);
        b = offcpu_walked.lookup(&tid);
        if (!b)
            return 0;
    }
    __u64 earned = (now - b->since) / SCOPE_OFFCPU_WALK_NS;
    if (earned) {
        b->walks = b->walks + earned > SCOPE_OFFCPU_BURST ? SCOPE_OFFCPU_BURST
                                                          : b->walks + earned;
        b->since += earned * SCOPE_OFFCPU_WALK_NS;
    }
    if (!b->walks) {
        stat_add(STAT_OFFCPU_RATE_SKIPPED);
        return 0;
    }
    b->walks--;
    stat_add(STAT_OFFCPU_STACKS);
    return current_stack(pid, tid);
}

int on_sample(struct bpf_perf_event_data *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 pid = id >> 32, tid = id, zero = 0, why = 0;
    struct sample_event smp = {.pid = pid, .tid = tid, .flags = SAMPLE_ONCPU};
    struct stack_offsets *so;
    struct walk_scratch *s;
    __u32 *mask;

    if (!pid)
        return 0;
    mask = targets.lookup(&pid);
    if (!mask || !(*mask & PROBE_STACKS))
        return 0;
    smp.ts_ns = bpf_ktime_get_ns();
    stat_add(STAT_SAMPLES);
    so = stack_offs.lookup(&pid);
    s = walk_scratch.lookup(&zero);
    if (!so || !s) {
        stat_add(STAT_SAMPLES_NO_LAYOUT);
        smp.flags |= SAMPLE_NO_THREAD;
        goto send;
    }
    smp.stack_id = take_stack(pid, tid, so, s, &why);
    if (!smp.stack_id) {
        stat_add(why);
        if (why == STAT_SAMPLES_NO_THREAD)
            smp.flags |= SAMPLE_NO_THREAD;
        goto send;
    }
    if (s->missing || s->cur) {
        stat_add(STAT_SAMPLES_TRUNCATED);
        smp.flags |= SAMPLE_TRUNCATED;
        smp.missing = s->missing;
    }
send:
    if (samples_rb.ringbuf_output(&smp, sizeof(smp), BPF_RB_NO_WAKEUP))
        stat_add(STAT_SAMPLES_LOST);
    return 0;
}
