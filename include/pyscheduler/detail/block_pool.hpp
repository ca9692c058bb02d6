// pyscheduler/detail/block_pool.hpp - the heap blocks that queued items and their
// future states live in, and the slabs that pyscheduler::Future items are carved from.
//
// Why slabs: a producer that queues items back to back paid more for malloc and free
// than for anything else it does (glibc: the arena lock, and at a burst's end the
// consolidation of its fast bins; about half of the producer's time at batch 256).
// A thread carves its Future items' blocks from a slab of its own with a bump
// pointer, no lock and no search; a block is freed, on whatever thread drops its
// last reference, by one atomic decrement of its slab's count of live blocks, and
// the slab goes to a process-wide cache of freed slabs when the count reaches zero
// (SlabCache). A thread whose slab is full and all freed (the usual case for
// request / response traffic) starts over at the slab's beginning instead.
//
// The price: a slab stays allocated while any block carved from it lives, so a
// future that is kept (neither got nor destroyed) keeps up to Slab::kBytes alive;
// and up to SlabCache::kMaxBytes of freed slabs stay with the process.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#define PYSCHEDULER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PYSCHEDULER_ASAN 1
#endif
#endif
#ifdef PYSCHEDULER_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace pyscheduler::detail {

inline constexpr std::size_t align_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) & ~(a - 1); }

/// How a block was allocated, kept in its head so that whoever frees it knows: the
/// alignment it was allocated with (a power of two, so bit 0 clear), or its slab's
/// address with bit 0 set.
using BlockTag = std::uintptr_t;

/// A heap block. Plain operator new already aligns to 16 bytes; the aligned overload
/// rounds the size up to the alignment, which costs a malloc size class, so it
/// serves over-aligned blocks only. The tag is `align`.
inline void* allocate_block(std::size_t size, std::size_t align) {
    return align <= __STDCPP_DEFAULT_NEW_ALIGNMENT__ ? ::operator new(size)
                                                     : ::operator new(size, std::align_val_t(align));
}

/// The start of a slab; its blocks follow, from the next cache line on. `live` is
/// kCarving plus the blocks not yet freed while a thread carves from it, and the
/// blocks not yet freed after.
struct Slab {
    static constexpr std::size_t kBytes = 16384;
    static constexpr std::size_t kHeader = 64;
    static constexpr std::size_t kMaxBlock = 1024;  // larger blocks: allocate_block
    static constexpr std::uint64_t kCarving = std::uint64_t{1} << 40;

    std::atomic<std::uint64_t> live{kCarving};
    Slab* next_cached = nullptr;  // SlabCache's list

    /// Slabs in use (carved from, or holding blocks not yet freed), by this copy of
    /// the header (tests look).
    static std::atomic<std::int64_t>& count() noexcept {
        static std::atomic<std::int64_t> n{0};
        return n;
    }
    /// A slab from the cache, else from the heap; throws std::bad_alloc.
    static Slab* make();
    /// Drops `n` of the count; the one that drops the last gives the slab to the
    /// cache, or to the heap when the cache is full.
    void release(std::uint64_t n) noexcept;

    unsigned char* begin() noexcept { return reinterpret_cast<unsigned char*>(this) + kHeader; }
    unsigned char* end() noexcept { return reinterpret_cast<unsigned char*>(this) + kBytes; }
};

/// Freed slabs, kept for reuse by any thread, newest first. Without it the slabs of
/// a burst went back to glibc at its end, glibc gave the top of its heap back to the
/// kernel, and the next burst page-faulted every page in again (some 40 % of the
/// producer's samples at batch 256). Up to kMaxBytes are kept, the largest trim
/// threshold glibc's own dynamic rule sets; more go back to the heap. One lock a
/// slab (some 100 items), on the carving thread when it takes one and on the
/// thread that frees a slab's last block when it puts one back.
class SlabCache {
public:
    static constexpr std::size_t kMaxBytes = std::size_t{32} << 20;
    static constexpr std::size_t kMaxSlabs = kMaxBytes / Slab::kBytes;

    /// Never destroyed: blocks may be freed while static objects are destroyed.
    static SlabCache& instance() noexcept {
        alignas(SlabCache) static unsigned char storage[sizeof(SlabCache)];
        static SlabCache* const cache = ::new (storage) SlabCache;
        return *cache;
    }

    Slab* take() noexcept {
        const std::lock_guard<std::mutex> lock(mutex_);
        Slab* s = head_;
        if (s != nullptr) {
            head_ = s->next_cached;
            --size_;
        }
        return s;
    }
    /// false: the cache is full, the slab stays the caller's.
    bool put(Slab* s) noexcept {
        const std::lock_guard<std::mutex> lock(mutex_);
        if (size_ == kMaxSlabs) return false;
        s->next_cached = head_;
        head_ = s;
        ++size_;
        return true;
    }
    std::size_t size() noexcept {
        const std::lock_guard<std::mutex> lock(mutex_);
        return size_;
    }

private:
    std::mutex mutex_;
    Slab* head_ = nullptr;
    std::size_t size_ = 0;
};

inline Slab* Slab::make() {
    Slab* s = SlabCache::instance().take();
    if (s != nullptr) {
        s->live.store(kCarving, std::memory_order_relaxed);  // the cache's lock ordered it after its last use
    } else {
        s = ::new (::operator new(kBytes)) Slab;
    }
    count().fetch_add(1, std::memory_order_relaxed);
    return s;
}

inline void Slab::release(std::uint64_t n) noexcept {
    if (live.fetch_sub(n, std::memory_order_acq_rel) != n) return;
    count().fetch_sub(1, std::memory_order_relaxed);
#ifdef PYSCHEDULER_ASAN
    ASAN_POISON_MEMORY_REGION(begin(), static_cast<std::size_t>(end() - begin()));
#endif
    if (SlabCache::instance().put(this)) return;
    this->~Slab();
    ::operator delete(this);
}

/// One thread's slab and bump pointer. Trivial members, reset by the destructor, so
/// that a block asked for while the thread's other thread_local objects are being
/// destroyed, after this one, finds `gone_` and is allocated from the heap instead.
class SlabCarver {
public:
    ~SlabCarver() {
        retire();
        gone_ = true;
    }

    /// `size` bytes, 16-aligned, and their tag; nullptr when the block is not to come
    /// from a slab (too large, or the thread is exiting). Throws std::bad_alloc.
    void* carve(std::size_t size, BlockTag& tag) {
        size = align_up(size, 16);
        if (size > Slab::kMaxBlock || gone_) return nullptr;
        if (size > static_cast<std::size_t>(end_ - next_)) refill();
        void* p = next_;
        next_ += size;
        ++carved_;
#ifdef PYSCHEDULER_ASAN
        ASAN_UNPOISON_MEMORY_REGION(p, size);
#endif
        tag = reinterpret_cast<BlockTag>(slab_) | 1;
        return p;
    }

private:
    /// A slab with room: this one from its start again when every block carved from
    /// it has been freed (nobody else can reach it then), else a new one.
    void refill() {
        if (slab_ != nullptr && slab_->live.load(std::memory_order_acquire) == Slab::kCarving - carved_) {
            slab_->live.store(Slab::kCarving, std::memory_order_relaxed);
        } else {
            Slab* fresh = Slab::make();
            retire();
            slab_ = fresh;
        }
        carved_ = 0;
        next_ = slab_->begin();
        end_ = slab_->end();
#ifdef PYSCHEDULER_ASAN
        ASAN_POISON_MEMORY_REGION(next_, static_cast<std::size_t>(end_ - next_));
#endif
    }
    void retire() noexcept {
        if (slab_ == nullptr) return;
        std::exchange(slab_, nullptr)->release(Slab::kCarving - carved_);
        next_ = end_ = nullptr;
    }

    Slab* slab_ = nullptr;
    unsigned char* next_ = nullptr;
    unsigned char* end_ = nullptr;
    std::uint64_t carved_ = 0;
    bool gone_ = false;
};

/// A block from the calling thread's slab when it is small enough, else from the
/// heap; sets `tag` for free_block.
inline void* allocate_pooled_block(std::size_t size, std::size_t align, BlockTag& tag) {
    if (align <= 16) {
        static thread_local SlabCarver carver;
        if (void* p = carver.carve(size, tag)) return p;
    }
    tag = align;
    return allocate_block(size, align);
}

/// Frees a block from allocate_block (tag: its alignment) or allocate_pooled_block.
inline void free_block(void* p, BlockTag tag) noexcept {
    if ((tag & 1) != 0) {
        reinterpret_cast<Slab*>(tag & ~BlockTag{1})->release(1);
    } else if (tag <= __STDCPP_DEFAULT_NEW_ALIGNMENT__) {
        ::operator delete(p);
    } else {
        ::operator delete(p, std::align_val_t(tag));
    }
}

}  // namespace pyscheduler::detail
