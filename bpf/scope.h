/* Event layouts and shared constants of scope-ebpf.
 *
 * This header is the one definition of every record the kernel hands to user
 * space: the BPF programs include it, and scope_ebpf/events.py parses it to
 * build the numpy dtypes that decode the ring buffers. Keep to the subset
 * that parser understands: `#define NAME NUMBER`, and structs whose members
 * are `__u8/__u16/__u32/__u64/__s32/__s64 name;`, `name[N]` arrays of those,
 * `char name[N];`, or `struct earlier name[N];` of a struct defined above.
 * Members are ordered so that no padding is ever inserted.
 */
#ifndef SCOPE_H
#define SCOPE_H

#define SCOPE_NAME_LEN 128   /* function name bytes kept, NUL included */
#define SCOPE_FILE_LEN 256   /* file name bytes kept, NUL included */
#define SCOPE_COMM_LEN 16
#define SCOPE_MAX_DEPTH 1024 /* frames kept per thread (>= CPython's default recursion
                              * limit); deeper calls are counted, as lost, not recorded */
#define SCOPE_NO_FUNC 0      /* function id meaning "no Python frame" */

/* call_event.flags */
#define CALL_OPEN 1          /* the call had not returned when its thread exited */
#define CALL_NO_RETURN_LINE 2 /* traced through the eval function: no return line */

/* func_event.flags */
#define FUNC_NAME_NULL 1     /* the probe passed a NULL name (not encodable as UTF-8) */
#define FUNC_FILE_NULL 2

/* proc_event.kind */
#define PROC_FORK 1
#define PROC_EXEC 2
#define PROC_EXIT 3
#define PROC_THREAD 4
#define PROC_ATTACH 5        /* the kernel adopted a process (other_pid: the cookie of the
                              * entry probe that did, NO_COOKIE for another probe) */
#define PROC_RENAME 6        /* a target thread's kernel name (comm) changed: comm is the new one */

/* The value of the `targets` map: which probe sets a process is traced with
 * (the daemon gives each selector its own; a run or trace gives all alike). */
#define PROBE_CALLS 1
#define PROBE_GC 2
#define PROBE_SCHED 4
#define PROBE_IMPORTS 8
#define PROBE_AUDIT 16
#define PROBE_STACKS 32      /* sampled Python stacks (bpf/stacks.bpf.c) */

/* Indexes into the per-CPU `stats` array; names in events.py STAT_NAMES. */
#define STAT_ENTRIES 0          /* function__entry hits of target threads */
#define STAT_RETURNS 1          /* function__return hits of target threads */
#define STAT_CALLS_LOST 2       /* completed calls dropped: calls ring buffer full */
#define STAT_FUNCS_LOST 3       /* function names dropped: funcs ring buffer full */
#define STAT_UNMATCHED 4        /* returns of frames entered before tracing began */
#define STAT_DEEP 5             /* calls deeper than SCOPE_MAX_DEPTH, not recorded */
#define STAT_GC 6               /* gc__done hits of target threads */
#define STAT_GC_LOST 7
#define STAT_SCHED 8            /* off-CPU intervals of target threads */
#define STAT_SCHED_LOST 9
#define STAT_PROC 10            /* fork/exec/exit/thread events of targets */
#define STAT_PROC_LOST 11
#define STAT_STACK_FULL 12      /* new threads not traced: thread map full */
#define STAT_FUNC_FULL 13       /* calls not interned: function map full */
#define STAT_OPEN_AT_EXIT 14    /* calls still open when their thread exited */
#define STAT_IMPORTS 15         /* import__find__load__done hits of targets */
#define STAT_IMPORTS_LOST 16
#define STAT_AUDIT 17           /* audit hits of targets */
#define STAT_AUDIT_LOST 18
#define STAT_FILTERED 19        /* completed calls of functions a matcher drops */
#define STAT_SHORT 20           /* completed calls shorter than --min-duration */
#define STAT_SAMPLED_OUT 21     /* completed calls skipped by 1-in-k sampling */
#define STAT_TID_FILTERED 22    /* completed calls of threads not selected */
#define STAT_BREAKER_SKIPPED 23 /* function probe hits ignored while the breaker is open */
#define STAT_GUARD_SAMPLED 24   /* calls skipped by the row guard (over --max-rate in 100 ms) */
#define STAT_CREATED 25         /* generator/coroutine creations seen (not calls) */
#define STAT_UNSYNCED 26        /* shadow frames whose return never came (counted, lost) */
#define STAT_PATHS_LOST 27      /* new call paths not announced: paths ring buffer full */
#define STAT_SAMPLES 28         /* timer samples of target threads (stacks set) */
#define STAT_SAMPLES_LOST 29    /* samples dropped: samples ring buffer full */
#define STAT_STACKS_LOST 30     /* new sampled stacks not sent: stacks ring full (samples
                                 * that carry them have no stack; sent at the next sight) */
#define STAT_SAMPLES_TRUNCATED 31 /* samples deeper than SCOPE_STACK_FRAMES (frames counted) */
#define STAT_SAMPLES_NO_THREAD 32 /* samples of threads whose PyThreadState is not known */
#define STAT_SAMPLES_NO_LAYOUT 33 /* samples of targets whose layout is not known yet */
#define STAT_SAMPLES_EMPTY 34   /* samples of threads running no Python frame */
#define STAT_TSTATE_WALKS 35    /* thread-list walks in the kernel (tid not in tstates) */
#define STAT_OFFCPU_STACKS 36   /* stacks walked at sched_switch (a target thread blocking) */
#define STAT_OFFCPU_UNWALKED 37 /* preemptions of target threads: no stack walked (on CPU
                                   samples show where they ran) */
#define STAT_EVENT_STACKS 38    /* stacks walked at gc__start and audit */
#define STAT_OFFCPU_RATE_SKIPPED 39 /* blocking switches not walked: over the thread's
                                       walk budget (SCOPE_OFFCPU_WALK_NS, _BURST) */
#define STAT_ADOPTED 40          /* processes adopted by the kernel at their first
                                   instruction or probe hit (exe mode, daemon) */
#define STAT_ADOPT_LOST 41       /* adoptions put off: proc ring buffer full (retried
                                   at the next probe hit) */
#define STAT_BUDGET_SKIPPED 42   /* function probe hits ignored: their selector's or
                                   process's own breaker was open (daemon budgets) */
#define STAT_BUDGET_SAMPLED 43   /* calls skipped by a selector's or process's row guard */
#define STAT_FSTAT_FAILED 44     /* calls not counted: no aggregates allocated, spill full */
#define STAT_FRAMES_RESET 45    /* shadow frames dropped uncounted: their stack restarted */
#define STAT_FSTAT_SPILLED 46   /* functions counted in the spill map (per-CPU memory short) */
#define STAT_COUNT 47
#define SCOPE_OFFCPU_WALK_NS 1000000 /* a thread that blocks earns one walk of its stack a ms, */
#define SCOPE_OFFCPU_BURST 16        /* up to this many saved (the rest: no stack, counted) */

#define SCOPE_HIST_BUCKETS 32   /* log2 latency: bucket i holds 2^i <= ns < 2^(i+1); last open */
#define BREAKER_WINDOW_NS 10000000 /* the breaker counts probe hits in 10 ms windows */
#define GUARD_WINDOW_NS 100000000  /* the row guard counts rows in 100 ms windows */
#define BUDGET_WINDOW_NS 100000000   /* a selector's or process's breaker counts hits in 100 ms
                                      * windows: a start-up's burst of a few ms does not trip it */
#define BUDGET_COOLDOWN_NS 1000000000 /* a selector's or process's tripped breaker re-admits
                                        * its calls after this long (decided in the kernel) */
#define TARGET_GROUP_SHIFT 8 /* targets value: PROBE_* bits, then the budget group (the
                              * daemon's selector index + 1; 0 = the host's budget only) */
#define MAX_GROUPS 64
#define BREAKER_CLOSED 0
#define BREAKER_OPEN 1
#define BREAKER_HALF_OPEN 2     /* re-attached on probation: trips again at once */

#define SCOPE_IMPORT_DEPTH 16   /* nested imports kept per thread */
#define SCOPE_AUDIT_LEN 64      /* audit event name bytes kept */

/* One completed Python call (one record per call, built from the per-thread
 * shadow stack at function__return). */
struct call_event {
    __u64 start_ns;      /* bpf_ktime_get_ns() at entry */
    __u64 duration_ns;
    __u32 pid;
    __u32 tid;
    __u32 func_id;
    __s32 return_line;
    __u16 depth;
    __u16 flags;
    __u32 weight;        /* k of the 1-in-k sampling the call was kept under */
    __u64 stack_id;      /* its path (struct frame.path) */
    __u64 self_ns;       /* duration minus its traced children's durations */
    __u64 offcpu_ns;     /* off-CPU time inside the call, its children's included */
    __u64 self_offcpu_ns; /* off-CPU time while it was the top frame (<= self_ns) */
    __u64 self_gil_ns;   /* of self_offcpu_ns, waiting to take the GIL */
};

/* A frame of a thread's shadow stack (the `stacks` map; the controller reads
 * the frames still open when tracing stops or their thread exits). */
struct frame {
    __u64 start_ns;
    __u32 func_id;
    __u32 k;             /* the function's verdict when the call began, or NOT_A_CALL */
    __u64 iframe;        /* its _PyInterpreterFrame, where the probes tell; 0 if not */
    __u64 path;          /* stack id: a hash of the function ids from the root to it */
    __u64 child_ns;      /* wall time of its completed child calls */
    __u64 off_ns;        /* off-CPU time inside it so far, its children's included */
    __u64 self_off_ns;   /* off-CPU time while it was the thread's top frame */
    __u64 self_gil_ns;   /* of which waiting to take the GIL */
    __u32 announced;     /* 1 once `path` was sent: the next call at this depth with the
                          * same path needs no lookup in the paths map */
    __u32 pad;
};

struct thread_stack {
    __u32 pid;
    __u32 depth;
    __u32 generation;    /* breaker generation it was built in */
    __u32 off_gil;       /* 1 if it left the CPU waiting for the GIL */
    __u64 off_since;     /* when the thread left the CPU; 0 while it runs */
    struct frame frames[SCOPE_MAX_DEPTH];
};

/* Sent the first time a call path is seen (the `paths` LRU map remembers it),
 * always before any row that carries it: parents before children. */
struct path_event {
    __u64 stack_id;
    __u64 parent_id;     /* 0 at the root */
    __u32 func_id;
    __u32 pid;
    __u32 depth;
    __u32 pad;
};

/* Completed calls are staged per CPU and reach the calls ring buffer as one
 * record per batch: one reservation, and one cache-hot copy, per 64 calls.
 * A batch is sent when full, when its oldest call is CALL_BATCH_AGE_NS old,
 * and whenever a task leaves that CPU (sched_switch), so no call waits on a
 * CPU whose thread is gone. Slots at count and beyond are stale. */
#define CALL_BATCH 64
#define CALL_BATCH_AGE_NS 50000000
struct call_batch {
    __u32 count;
    __u32 pad;
    __u64 first_ns;      /* when the batch's first call was staged */
    struct call_event ev[CALL_BATCH];
};

/* Sent once per interned function: later events carry only func_id. */
struct func_event {
    __u64 key_name;      /* the kernel's key for it (see func_key in scope.bpf.c), */
    __u64 key_file;      /* which the controller needs to write its verdict */
    __u32 func_id;
    __u32 pid;
    __s32 line;          /* the line function__entry gives: the def line */
    __u32 flags;
    char name[SCOPE_NAME_LEN];
    char file[SCOPE_FILE_LEN];
};

struct gc_event {
    __u64 start_ns;
    __u64 duration_ns;
    __s64 collected;
    __u64 stack_id;      /* kernel id of the Python stack at gc__start (stacks set); 0 none */
    __u32 pid;
    __u32 tid;
    __s32 generation;
    __u32 pad;
};

/* One off-CPU interval of a target thread. */
struct sched_event {
    __u64 start_ns;      /* left the CPU */
    __u64 duration_ns;
    __u64 runq_ns;       /* wakeup (or preemption) to back on CPU */
    __s64 prev_state;
    __u32 pid;
    __u32 tid;
    __u32 func_id;       /* top of the thread's Python stack when it left */
    __u16 woken;         /* 1 if a sched_wakeup was seen for the interval */
    __u16 gil;           /* 1 if it left inside the GIL's wait (interpreters/gil.py) */
    __u64 stack_id;      /* kernel id of its Python stack when it left (stacks set); 0 none */
};

struct import_event {
    __u64 start_ns;
    __u64 duration_ns;
    __u32 pid;
    __u32 tid;
    __s32 found;
    __u32 depth;
    char module[SCOPE_NAME_LEN];
};

struct audit_event {
    __u64 ts_ns;
    __u64 stack_id;      /* kernel id of the Python stack that raised it (stacks set); 0 none */
    __u32 pid;
    __u32 tid;
    char event[SCOPE_AUDIT_LEN];
};

struct proc_event {
    __u64 ts_ns;
    __u32 kind;
    __u32 pid;
    __u32 tid;
    __u32 other_pid;     /* fork: the child; thread: the new tid */
    char comm[SCOPE_COMM_LEN];
    char filename[SCOPE_FILE_LEN]; /* exec: the file; attach at entry: argv, NUL-separated */
    __u32 uid;           /* attach: who runs it, so that a process gone before user */
    __u32 argc;          /* space looks can still be matched against selectors */
    __u64 cgroup_id;     /* attach: its cgroup v2 (the directory's inode) */
};
#define NO_COOKIE 0xffffffff

/* Exact per-function aggregates, kept per CPU whatever rows are kept.
 * count = calls rows sent + dropped + lost, for every function. */
struct fstat {
    __u64 count;
    __u64 total_ns;
    __u64 min_ns;
    __u64 max_ns;
    __u64 dropped;       /* no row by choice: matcher, --min-duration, threads, sampling */
    __u64 lost;          /* no row by force: deeper than the shadow stack, ring buffer full */
    __u64 self_ns;       /* summed self time (duration minus traced children's) */
    __u64 self_offcpu_ns; /* of which off the CPU */
    __u64 self_gil_ns;   /* of which waiting to take the GIL */
    __u64 hist[SCOPE_HIST_BUCKETS];
};

/* An interned function: the value of the `funcs` map. Its verdict rides
 * along, so the decision costs no lookup beyond the interning one. */
struct func_info {
    __u32 id;
    __u32 k;             /* rows: one call in k; 0 = none leave the kernel (matcher) */
    __u32 flags;         /* FINFO_*, set by the kernel when it interns the function */
    __u32 pad;
};
#define FINFO_GENLIKE 1  /* generator, coroutine or async generator code: a frame
                          * that starts unowned by its generator is its creation */

struct config {
    __u64 min_duration_ns;   /* calls shorter than this are counted, not sent */
    __u64 breaker_limit;     /* probe hits per BREAKER_WINDOW_NS that trip it; 0 = off */
    __u32 tid_filter;        /* 1: only threads in `tids` produce call rows */
    __u32 guard_k;           /* rows past ... (at most this k: see breaker.window_k) */
    __u64 row_limit;         /* ... this many in a GUARD_WINDOW_NS (100 ms) window are sampled
                              * 1-in-guard_k more; 0 = off */
    __u32 any_pid_mask;      /* PROBE_* of processes adopted by an exe-mode probe */
    __u32 watch_exec;        /* 1: report every exec on the host, not only targets' (daemon) */
    __u64 keep_ns;           /* calls this long are never sampled out (weight 1): a rare
                              * slow call would otherwise stand for k calls */
};

/* The budget of one daemon selector (`budgets`, by group) or of one process
 * (`proc_budgets`, by pid, its limits copied from its group's proc_* ones):
 * a breaker and a row guard of its own, so that a noisy selector or process
 * trips or is sampled alone. */
struct budget {
    __u64 hit_limit;         /* probe hits per BUDGET_WINDOW_NS that trip it; 0 = off */
    __u64 row_limit;         /* call rows per GUARD_WINDOW_NS before its guard samples */
    __u64 proc_hit_limit;    /* group: the same for each of its processes */
    __u64 proc_row_limit;
    __u64 window_start_ns;
    __u64 count;
    __u64 opened_ns;
    __u64 trips;             /* times it opened (a group: its own and its processes') */
    __u64 skipped;           /* probe hits ignored while open */
    __u64 sampled;           /* rows its guard sampled out */
    __u64 rows_window_ns;
    __u64 rows;
    __u32 state;             /* BREAKER_* */
    __u32 epoch;             /* bumped when it re-admits: its threads' shadow stacks restart */
    __u32 window_k;
    __u32 group;
};

struct breaker {
    __u64 window_start_ns;
    __u64 count;             /* probe hits in the current window */
    __u64 opened_ns;         /* when it last tripped */
    __u64 tripped_count;     /* hits in the window that tripped it ... */
    __u64 tripped_after_ns;  /* ... counted over this long */
    __u64 rows_window_ns;    /* the row guard's window ... */
    __u64 rows;              /* ... and the rows sent in it */
    __u32 state;             /* BREAKER_* */
    __u32 generation;        /* bumped on re-attach: shadow stacks older than it restart */
    __u32 window_k;          /* the row guard's k for the rest of its window; 0 = not yet */
    __u32 pad;
};

/* Where a probe's three arguments live, written by the controller for every
 * attach point (indexed by the BPF cookie) so one program serves every
 * interpreter build: registers and stack slots differ between builds. */
#define ARG_NONE 0
#define ARG_REG 1     /* value of register `reg` */
#define ARG_MEM 2     /* `size` bytes at register `reg` + disp */
#define ARG_CONST 3   /* disp itself */

/* probe_spec.flags */
#define SPEC_ANY_PID 1 /* attached by binary: any process that hits it becomes a target */
#define SPEC_THROW_ONLY 2 /* eval entry of a build with function probes: only throw() resumes,
                           * which fire no entry probe, are calls here */

struct probe_spec {
    __s64 disp0;
    __s64 disp1;
    __s64 disp2;
    __u8 kind0;
    __u8 reg0;
    __u8 size0;
    __u8 signed0;
    __u8 kind1;
    __u8 reg1;
    __u8 size1;
    __u8 signed1;
    __u8 kind2;
    __u8 reg2;
    __u8 size2;
    __u8 signed2;
    __u16 flags;
    __u8 frame_reg;      /* REGS index + 1 of the register holding the probe's
                          * _PyInterpreterFrame (found by disassembly); 0 = unknown */
    __u8 exit_cond;      /* an eval-function exit probed on a conditional branch:
                          * 2 * code + negated (see branch_taken); 0 = always */
    __u32 adopt_mask;    /* entry probe (on_start): the probe sets a process of this
                          * file is adopted with until user space decides */
    __u32 pad;
};

/* Where a CPython build keeps what the programs read of its frames and code
 * objects (def lines, generator creation, the eval-function path),
 * per attach point (cookie): from _Py_DebugOffsets, or fixed per version. */
struct frame_offsets {
    __u64 executable_mask;   /* clears the tag bits of f_executable (3.14+) */
    __u32 frame_executable;  /* _PyInterpreterFrame -> code object */
    __u32 code_base;         /* 8-aligned start of the 64 code-object bytes read per call */
    __u32 name_word;         /* co_name: u64 index into those bytes */
    __u32 file_word;         /* co_filename */
    __u32 line_word;         /* co_firstlineno (int32) ... */
    __u32 line_shift;        /* ... at this bit shift in its word */
    __u32 str_state;         /* PyASCIIObject.state byte */
    __u32 str_data;          /* where a compact ASCII str's text starts */
    __u32 code_flags;        /* PyCodeObject.co_flags; 0 = unknown */
    __u32 frame_owner;       /* _PyInterpreterFrame.owner (a byte); 0 = unknown */
};
/* Sampled stacks (bpf/stacks.bpf.c): per target process, where its interpreter
 * keeps threads and frames (from interpreters/layouts, written by the controller). */
#define SCOPE_STACK_FRAMES 128   /* frames recorded per sample; deeper ones are counted */
#define SCOPE_STACK_COUNT 1024   /* frames counted past those at most (then STACK_COUNT_CUT) */
#define SCOPE_THREAD_WALK 256    /* thread states looked at in one thread-list walk */
#define SO_INSTR_INT 1           /* stack_offsets.flags: the instruction is an int f_lasti */
#define SO_WALK_ALWAYS 2         /* (bench) walk the thread list on every sample */
struct stack_offsets {
    __u64 runtime;           /* address of _PyRuntime in the process */
    __u64 code_mask;         /* clears the tag bits of the frame's code pointer (3.14+) */
    __u32 interp_head;       /* _PyRuntime.interpreters.head */
    __u32 threads_head;      /* PyInterpreterState.threads.head */
    __u32 tstate_next;
    __s32 tstate_native_tid; /* -1: not in this version (3.8-3.10): the tstates map only */
    __u32 tstate_frame;      /* frame / cframe / current_frame */
    __s32 cframe_frame;      /* _PyCFrame.current_frame (3.11-3.12); -1 none */
    __u32 frame_previous;
    __u32 frame_code;
    __u32 frame_instr;
    __s32 frame_owner;       /* owner byte (any byte of the frame if none) */
    __u32 owner_skip;        /* owner >= this is a shim, not Python code; 256: none */
    __u32 flags;             /* SO_* */
    __u32 frame_size;        /* bytes of a frame read (every field above within), <= 128 */
    __u32 frame_lo;          /* from this offset: the frame_* offsets above are relative to it */
    __u64 chunk_mask;        /* a frame is read from (its address + frame_lo) & this: the
                              * start of its page where frames sit side by side (3.11+'s
                              * data stack), so one read gets its callers too; else ~0 */
};

/* The value of the `tstates` map (tid -> its PyThreadState). */
struct tstate_entry {
    __u64 tstate;
    __u32 pid;
    __u32 pad;
};

/* sample_event.flags */
#define SAMPLE_ONCPU 1
#define SAMPLE_TRUNCATED 2       /* its stack has frames past SCOPE_STACK_FRAMES */
#define SAMPLE_NO_THREAD 4       /* the thread's PyThreadState was not found: no stack */
#define STACK_COUNT_CUT 8        /* pystack_event: more than SCOPE_STACK_COUNT frames past */

/* One timer sample of a target thread; stack_id 0 = no Python frame (or none known). */
struct sample_event {
    __u64 ts_ns;
    __u64 stack_id;          /* the kernel's id of the stack (a pystack_event sent before) */
    __u32 pid;
    __u32 tid;
    __u32 flags;             /* SAMPLE_* */
    __u32 missing;           /* frames past the recorded ones (SAMPLE_TRUNCATED) */
};

/* One frame of a sampled stack: its code object and where it is in it (a
 * pointer into the bytecode 3.11+, f_lasti before), resolved in user space. */
struct stack_frame {
    __u64 code;
    __u64 instr;
};

/* Sent once per stack (the `sampled` LRU map remembers which were), before any
 * sample that carries it. Frames innermost first. */
struct pystack_event {
    __u64 stack_id;
    __u32 pid;
    __u32 depth;             /* frames recorded */
    __u32 missing;           /* frames counted past them */
    __u32 flags;             /* STACK_COUNT_CUT */
    struct stack_frame frames[SCOPE_STACK_FRAMES];
};

#define CO_GENLIKE (0x20 | 0x80 | 0x200)  /* CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR */
#define FRAME_OWNED_BY_GENERATOR 1

#endif
