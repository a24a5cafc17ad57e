/* threads.c — the library's CPU thread pool.
 *
 * A fixed set of pthreads started lazily on the first parallel loop, sized by dr_set_num_threads (default: the
 * CPUs in the process's affinity mask, or DYNREFER_NUM_THREADS). One parallel loop runs at a time; a loop
 * requested while the pool is busy (another caller thread, or a nested loop) runs inline on its caller, so
 * concurrent callers never wait on each other and never deadlock. Work is cut into fixed chunks handed out by an
 * atomic counter; the chunking depends only on n, grain and the thread count, never on timing.
 * Fork safety: pthread_atfork handlers hold the pool across fork(); the child forgets the parent's threads and
 * starts its own pool on first use, so a forked DataLoader worker never waits on threads that do not exist.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "dynrefer.h"

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    pthread_t *workers;
    int nworkers;        /* threads started (excluding callers) */
    int shutdown;        /* asks workers to exit */
    uint64_t generation; /* bumped for every job */
    int remaining;       /* workers yet to finish the current job */
    /* the current job */
    dr_task_fn fn;
    void *ctx;
    int64_t n, nchunks;
    atomic_llong next;
} dr_pool;

static dr_pool pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv_work = PTHREAD_COND_INITIALIZER, .cv_done = PTHREAD_COND_INITIALIZER};
static pthread_mutex_t dispatch_mu = PTHREAD_MUTEX_INITIALIZER; /* held by the caller running a job */
static int num_threads = 0;                                      /* 0: not yet decided */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static _Thread_local int in_pool_worker = 0;

static void run_chunks(void) {
    for (;;) {
        int64_t c = atomic_fetch_add(&pool.next, 1);
        if (c >= pool.nchunks)
            break;
        int64_t b = (int64_t)((__int128)pool.n * c / pool.nchunks);
        int64_t e = (int64_t)((__int128)pool.n * (c + 1) / pool.nchunks);
        if (e > b)
            pool.fn(pool.ctx, b, e);
    }
}

static void *worker_main(void *arg) {
    /* the generation current when this worker was created: jobs after it are this worker's to join */
    uint64_t seen = (uint64_t)(uintptr_t)arg;
    in_pool_worker = 1;
    pthread_mutex_lock(&pool.mu);
    for (;;) {
        while (pool.generation == seen && !pool.shutdown)
            pthread_cond_wait(&pool.cv_work, &pool.mu);
        if (pool.shutdown)
            break;
        seen = pool.generation;
        pthread_mutex_unlock(&pool.mu);
        run_chunks();
        pthread_mutex_lock(&pool.mu);
        if (--pool.remaining == 0)
            pthread_cond_signal(&pool.cv_done);
    }
    pthread_mutex_unlock(&pool.mu);
    return NULL;
}

static int default_threads(void) {
    const char *env = getenv("DYNREFER_NUM_THREADS");
    if (env && atoi(env) > 0)
        return atoi(env);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c > 0)
            return c;
    }
    return 1;
}

/* caller holds dispatch_mu */
static void stop_workers(void) {
    if (pool.nworkers == 0)
        return;
    pthread_mutex_lock(&pool.mu);
    pool.shutdown = 1;
    pthread_cond_broadcast(&pool.cv_work);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.nworkers; i++)
        pthread_join(pool.workers[i], NULL);
    free(pool.workers);
    pool.workers = NULL;
    pool.nworkers = 0;
    pool.shutdown = 0;
}

static void atfork_prepare(void) {
    pthread_mutex_lock(&dispatch_mu);
    pthread_mutex_lock(&pool.mu);
}

static void atfork_parent(void) {
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&dispatch_mu);
}

static void atfork_child(void) {
    /* the parent's workers do not exist here: forget them, start afresh on first use */
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv_work, NULL);
    pthread_cond_init(&pool.cv_done, NULL);
    pthread_mutex_init(&dispatch_mu, NULL);
    free(pool.workers);
    pool.workers = NULL;
    pool.nworkers = 0;
    pool.shutdown = 0;
    pool.remaining = 0;
}

static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* caller holds dispatch_mu; returns the number of workers running */
static int ensure_workers(int want) {
    pthread_once(&atfork_once, register_atfork);
    if (pool.nworkers == want)
        return want;
    stop_workers();
    pool.workers = (pthread_t *)calloc((size_t)(want > 0 ? want : 1), sizeof(pthread_t));
    if (!pool.workers)
        return 0;
    pthread_mutex_lock(&pool.mu);
    int started = 0;
    for (int i = 0; i < want; i++) {
        if (pthread_create(&pool.workers[i], NULL, worker_main, (void *)(uintptr_t)pool.generation) != 0)
            break;
        started++;
    }
    pool.nworkers = started;
    pthread_mutex_unlock(&pool.mu);
    return started;
}

int dr_get_num_threads(void) {
    if (num_threads <= 0)
        num_threads = default_threads();
    return num_threads;
}

void dr_set_num_threads(int n) {
    if (n < 1)
        n = 1;
    pthread_mutex_lock(&dispatch_mu);
    num_threads = n;
    if (pool.nworkers != n - 1)
        stop_workers();
    pthread_mutex_unlock(&dispatch_mu);
}

/* Run fn over [0, n) in chunks of at least `grain` on the pool (or inline). O(n) calls of fn's work. */
void dr_parallel_for(int64_t n, int64_t grain, dr_task_fn fn, void *ctx) {
    if (n <= 0)
        return;
    if (grain < 1)
        grain = 1;
    int nt = dr_get_num_threads();
    if (nt <= 1 || n <= grain || in_pool_worker || pthread_mutex_trylock(&dispatch_mu) != 0) {
        fn(ctx, 0, n);
        return;
    }
    int nw = ensure_workers(nt - 1);
    if (nw == 0) {
        pthread_mutex_unlock(&dispatch_mu);
        fn(ctx, 0, n);
        return;
    }
    int64_t nchunks = (n + grain - 1) / grain;
    int64_t maxchunks = (int64_t)(nw + 1) * 4;
    if (nchunks > maxchunks)
        nchunks = maxchunks;
    pthread_mutex_lock(&pool.mu);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.nchunks = nchunks;
    atomic_store(&pool.next, 0);
    pool.remaining = nw;
    pool.generation++;
    pthread_cond_broadcast(&pool.cv_work);
    pthread_mutex_unlock(&pool.mu);

    in_pool_worker = 1; /* nested loops from fn on this thread run inline */
    run_chunks();
    in_pool_worker = 0;

    pthread_mutex_lock(&pool.mu);
    while (pool.remaining > 0)
        pthread_cond_wait(&pool.cv_done, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&dispatch_mu);
}
