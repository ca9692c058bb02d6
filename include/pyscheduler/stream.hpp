// pyscheduler/stream.hpp - results of a Python generator (or any iterable), delivered
// to C++ element by element: InvokeHandler::stream<R>() returns a Stream<R>.
//
// How a stream runs. The item that starts it is an ordinary item (commit, batch call,
// priorities, deadlines, groups, inputs all apply); its result, the iterable, goes to
// a StreamCore instead of a callback. From then on the stream is advanced by *steps*:
// the core itself goes through the handler's queue and prefetch ring like an item, and
// an executor that takes it advances the generator with the GIL held instead of
// calling the function. A step produces at most as many elements as the consumer has
// room for (StreamOptions::buffer unread elements), and yields the executor to other
// work (items, other streams) every kSliceElements elements when any is waiting. A
// stream whose buffer is full parks: no step is queued, nothing runs; the consumer's
// read that brings the unread count down to half the buffer queues the next step.
// Only a step ends a stream (its generator exhausted, raising, or closed), so the
// generator is only ever touched by the executor, under its interpreter's GIL.
//
// Hand-over: the executor converts a slice without the lock and appends it to the
// buffer under one lock; the reader swaps the whole buffer out under one lock and
// reads it without. A reader that finds nothing spins briefly, then blocks; while it
// is blocked the executor hands over every element as it comes, so a slow
// generator's elements arrive one by one, as produced.
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/gil.hpp"
#include "pyscheduler/detail/interpreter.hpp"
#include "pyscheduler/detail/task.hpp"
#include "pyscheduler/errors.hpp"
#include "pyscheduler/future.hpp"
#include "pyscheduler/gil_safe.hpp"
#include "pyscheduler/options.hpp"

namespace pyscheduler {

template <class R>
class PYSCHEDULER_HIDDEN Stream;
template <class Policy>
class PYSCHEDULER_HIDDEN BasicInvokeHandler;

/// Options of InvokeHandler::stream().
struct StreamOptions {
    /// Unread elements at most: the generator is not advanced while the consumer has
    /// this many waiting. At least 1.
    std::size_t buffer = 256;
    /// Priority, deadline and group of the item that starts the stream.
    ItemOptions item;
};

namespace detail {

namespace py = pybind11;

class StreamBase;

/// The pipeline as its streams see it.
class PYSCHEDULER_HIDDEN StreamHost {
public:
    /// Queues a step of `s` (behind whatever is queued already).
    virtual void queue_step(StreamBase* s) noexcept = 0;
    /// `s` has ended: the host lets go of it.
    virtual void stream_ended(StreamBase* s) noexcept = 0;

protected:
    ~StreamHost() = default;
};

/// The part of a stream that does not depend on its element type: the step the
/// pipeline runs, and the hand-over between executor and consumer.
class PYSCHEDULER_HIDDEN StreamBase : public TaskBase {
public:
    /// What the executor does with a stream after a step.
    enum class After { Requeue, Parked, Ended };

    StreamBase(std::size_t capacity, std::string where)
        : capacity_(capacity), low_water_(capacity / 2), where_(std::move(where)) {
        stream_step = true;
    }

    // A step commits nothing and is never part of a Python call: the stages are no-ops.
    bool commit_needs_gil() const noexcept override { return false; }
    void commit(const std::string& /*where*/) noexcept override {}
    py::object to_python() override { return {}; }
    void deliver(py::handle /*result*/, const std::string& /*where*/) noexcept override {}
    void drop_closures() noexcept override {}
    GroupState::Report complete() noexcept override { return {}; }

    /// Executor, GIL held: one step. `yield_now()` says whether the executor has other
    /// work waiting, or is paused or cancelling (then the step ends after its slice).
    template <class YieldNow>
    After step(YieldNow&& yield_now) noexcept {
        if (failed()) return end_now(error);  // Cancelled by shutdown(Cancel)
        if (closed_.load(std::memory_order_seq_cst)) return end_now(nullptr);
        for (;;) {
            std::size_t room = capacity_ - unread();
            if (room == 0) {
                // Park, then look again: a read between the two either sees parked_ and
                // queues the step, or is seen here (seq_cst on both sides).
                parked_.store(true, std::memory_order_seq_cst);
                if (unread() > low_water_ && !closed_.load(std::memory_order_seq_cst)) return After::Parked;
                if (!parked_.exchange(false, std::memory_order_seq_cst)) return After::Parked;  // a reader took it
                if (closed_.load(std::memory_order_seq_cst)) return end_now(nullptr);
                room = capacity_ - unread();
            }
            const std::size_t slice = room < kSliceElements ? room : kSliceElements;
            std::exception_ptr ended;
            bool exhausted = false;
            produce(slice, exhausted, ended);
            if (exhausted || ended) return end_now(ended);
            if (closed_.load(std::memory_order_seq_cst)) return end_now(nullptr);
            if (yield_now()) return After::Requeue;
        }
    }

    /// Executor, GIL held: the item that starts the stream returned `iterable`. Takes
    /// its iterator and runs the first step at once (no queue round trip before the
    /// first element). Never throws: a bad iterable ends the stream with the error.
    template <class YieldNow>
    After start(py::handle iterable, YieldNow&& yield_now) noexcept {
        try {
            iterator_ = py::reinterpret_steal<py::object>(PyObject_GetIter(iterable.ptr()));
            if (!iterator_) throw py::error_already_set();  // TypeError: 'int' object is not iterable
            const Py_ssize_t hint = PyObject_LengthHint(iterable.ptr(), -1);
            if (hint < 0) {
                PyErr_Clear();
            } else {
                size_hint_.store(static_cast<std::int64_t>(hint), std::memory_order_release);
            }
        } catch (...) {
            return end_now(capture_exception(where_));
        }
        return step(std::forward<YieldNow>(yield_now));
    }

    /// The start item failed (its error: the stream's), or the stream could not be
    /// queued: ends a stream that never had a generator. Any thread, no GIL needed.
    void end_unstarted(std::exception_ptr e) noexcept { finish(std::move(e)); }

    /// Consumer: stop early. The next step closes the generator (GeneratorExit in it).
    void close() noexcept {
        closed_.store(true, std::memory_order_seq_cst);
        unpark();
    }

    /// Consumer: `n` elements read in all. Queues the next step when the stream is
    /// parked and the unread count is down to half the buffer.
    void mark_read(std::uint64_t n) noexcept {
        consumed_.store(n, std::memory_order_seq_cst);
        if (produced_.load(std::memory_order_relaxed) - n <= low_water_) unpark();
    }

    /// shutdown(Cancel): a parked stream gets a step (which fails with Cancelled).
    void unpark() noexcept {
        if (parked_.load(std::memory_order_seq_cst) && parked_.exchange(false, std::memory_order_seq_cst)) {
            host_->queue_step(this);
        }
    }

    std::optional<std::size_t> size_hint() const noexcept {
        const std::int64_t h = size_hint_.load(std::memory_order_acquire);
        if (h < 0) return std::nullopt;
        return static_cast<std::size_t>(h);
    }

    void set_host(StreamHost* host) noexcept { host_ = host; }

    /// A step could not be queued (out of memory for a queue block): the stream stays
    /// parked, and the next read, close() or shutdown(Cancel) tries again.
    void repark() noexcept { parked_.store(true, std::memory_order_seq_cst); }

    /// Elements per slice: a step checks for other waiting work, and hands what it
    /// produced to the consumer, at least this often.
    static constexpr std::size_t kSliceElements = 64;

protected:
    ~StreamBase() = default;

    /// Executor, GIL held: converts and appends up to `n` elements. Sets `exhausted`
    /// at the generator's end, `ended` to the error that ends the stream.
    virtual void produce(std::size_t n, bool& exhausted, std::exception_ptr& ended) noexcept = 0;

    /// Executor, GIL held: the next element, a new reference; null at the end (with
    /// `ended` set when the generator raised).
    PyObject* next_object(std::exception_ptr& ended) noexcept {
        PyObject* x = PyIter_Next(iterator_.ptr());
        if (x == nullptr && PyErr_Occurred()) ended = capture_python_error(where_);
        return x;
    }

    std::uint64_t unread() const noexcept {
        return produced_.load(std::memory_order_relaxed) - consumed_.load(std::memory_order_seq_cst);
    }

    const std::size_t capacity_;
    const std::size_t low_water_;
    const std::string where_;
    std::mutex mutex_;  // the element buffer, ended_, error_; with cv_ the consumer waits
    std::condition_variable cv_;
    bool ended_ = false;
    std::exception_ptr end_error_;
    std::atomic<std::uint64_t> produced_{0};  // elements handed to the buffer (executor)
    std::atomic<std::uint64_t> consumed_{0};  // elements read (consumer)
    std::atomic<bool> reader_blocked_{false};  // the reader waits on cv_ for an empty buffer

private:
    template <class>
    friend class pyscheduler::Stream;

    /// Executor, GIL held: closes the iterator (when it has close(): a generator gets
    /// GeneratorExit and runs its finally blocks; a no-op once it has finished), drops
    /// it, and ends the stream with `e` (null: normally).
    After end_now(std::exception_ptr e) noexcept {
        if (iterator_) {
            if (PyObject_HasAttrString(iterator_.ptr(), "close") == 1) {
                PyObject* r = PyObject_CallMethod(iterator_.ptr(), "close", nullptr);
                if (r == nullptr) {
                    std::exception_ptr closing = capture_python_error(where_ + " (closing the stream's generator)");
                    if (!e) e = std::move(closing);
                }
                Py_XDECREF(r);
            }
            iterator_ = py::object();
        }
        finish(std::move(e));
        return After::Ended;
    }

    void finish(std::exception_ptr e) noexcept {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            ended_ = true;
            end_error_ = e;
        }
        cv_.notify_all();
        fail_promised(e);
    }

    /// Element futures not fulfilled when the stream ended fail (no lock held).
    virtual void fail_promised(const std::exception_ptr& e) noexcept = 0;

    StreamHost* host_ = nullptr;
    py::object iterator_;  // executor, GIL held
    std::atomic<bool> parked_{false};
    std::atomic<bool> closed_{false};
    std::atomic<std::int64_t> size_hint_{-1};
};

/// A stream whose elements are converted to R (pybind11::cast) on the executor.
template <class R>
class PYSCHEDULER_HIDDEN StreamCore final : public StreamBase {
public:
    using StreamBase::StreamBase;
    ~StreamCore() = default;

private:
    template <class>
    friend class pyscheduler::Stream;
    using State = FutureState<R>;

    void produce(std::size_t n, bool& exhausted, std::exception_ptr& ended) noexcept override {
        scratch_.clear();
        try {
            scratch_.reserve(n);
        } catch (...) {
            ended = std::current_exception();
            return;
        }
        for (std::size_t i = 0; i < n; ++i) {
            PyObject* x = next_object(ended);
            if (x == nullptr) {
                exhausted = !ended;
                break;
            }
            try {
                scratch_.push_back(py::cast<R>(py::handle(x)));
            } catch (const std::exception& e) {
                const auto index = produced_.load(std::memory_order_relaxed) + scratch_.size();
                try {
                    ended = std::make_exception_ptr(ResultError(where_ + ": element " + std::to_string(index) +
                                                                " of the stream did not convert: " + e.what()));
                } catch (...) {
                    ended = std::current_exception();
                }
                Py_DECREF(x);
                break;
            }
            Py_DECREF(x);
            // A reader blocked on an empty buffer gets each element as it comes (a slow
            // generator's first element must not wait for a slice to fill).
            if (reader_blocked_.load(std::memory_order_relaxed)) break;
        }
        if (scratch_.empty()) return;
        std::vector<std::pair<State*, R>> ready;  // element futures fulfilled now, set outside the lock
        {
            std::lock_guard<std::mutex> lock(mutex_);
            std::uint64_t index = produced_.load(std::memory_order_relaxed);
            for (R& v : scratch_) {
                if (!promised_.empty()) {
                    auto it = promised_.find(index);
                    if (it != promised_.end()) {
                        try {
                            ready.emplace_back(it->second, v);
                        } catch (...) {
                            it->second->set_exception(std::current_exception());
                            it->second->release();
                        }
                        promised_.erase(it);
                    }
                }
                buffer_.push_back(std::move(v));
                ++index;
            }
            produced_.store(index, std::memory_order_seq_cst);
        }
        cv_.notify_one();
        for (auto& [state, value] : ready) {
            state->set_value(std::move(value));
            state->release();
        }
    }

    void fail_promised(const std::exception_ptr& e) noexcept override {
        std::map<std::uint64_t, State*> left;
        std::uint64_t produced = 0;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            left.swap(promised_);
            produced = produced_.load(std::memory_order_relaxed);
        }
        for (auto& [index, state] : left) {
            state->set_exception(e ? e : ended_before(index, produced));
            state->release();
        }
    }

    std::exception_ptr ended_before(std::uint64_t index, std::uint64_t produced) const noexcept {
        try {
            return std::make_exception_ptr(std::out_of_range(where_ + ": the stream ended after " +
                                                             std::to_string(produced) + " elements; element " +
                                                             std::to_string(index) + " does not exist"));
        } catch (...) {
            return std::current_exception();
        }
    }

    static State* new_state() {
        void* memory = allocate_block(sizeof(State), alignof(State));
        return ::new (memory) State(alignof(State));
    }

    std::deque<R> buffer_;                     // produced, not yet taken by the consumer (mutex_)
    std::map<std::uint64_t, State*> promised_;  // element futures asked for before their element (mutex_)
    std::vector<R> scratch_;                   // executor: one slice, converted without the lock
};

/// Ends the stream when the item that starts it fails (so its callback never ran).
struct PYSCHEDULER_HIDDEN StreamStartWatch final : Continuation {
    StreamStartWatch(std::shared_ptr<StreamBase> c, StreamHost* h, FutureState<void>* s) noexcept
        : core(std::move(c)), host(h), state(s) {
        Continuation::run = &StreamStartWatch::on_ready;
    }
    static void on_ready(Continuation* c) noexcept {
        auto* self = static_cast<StreamStartWatch*>(c);
        if (const std::exception_ptr& e = self->state->error()) {
            self->core->end_unstarted(e);
            self->host->stream_ended(self->core.get());
        }
        delete self;
    }
    std::shared_ptr<StreamBase> core;
    StreamHost* host;
    FutureState<void>* state;  // alive while its continuations run
};

}  // namespace detail

/// The consumer's end of a stream (InvokeHandler::stream<R>): the elements of the
/// Python iterable, converted to R, in order. Move-only, for one consumer thread at a
/// time. Dropping it, or close(), stops the stream: the executor closes the generator
/// (GeneratorExit in it; its finally blocks run) and drops what was not read.
///
/// How it ends: next() returns std::nullopt after the last element when the iterable
/// ended normally; when the stream failed (a Python exception mid-stream, an element
/// that did not convert, the starting item failing, shutdown(Cancel)), every element
/// delivered before stays readable, and then next() throws the error (PythonError,
/// ResultError, Cancelled...), every time it is called.
template <class R>
class PYSCHEDULER_HIDDEN Stream {
    static_assert(!owns_python_references_v<R>,
                  "pyscheduler: Stream<R>: R holds Python objects, and elements are read by a thread that may not "
                  "hold the GIL. Ask for a C++ type (Stream<long>, Stream<std::string>...).");

public:
    Stream() = default;
    Stream(Stream&&) noexcept = default;
    Stream& operator=(Stream&& other) noexcept {
        if (this != &other) {
            close();
            core_ = std::move(other.core_);
            local_ = std::move(other.local_);
            read_ = std::exchange(other.read_, 0);
            closed_ = std::exchange(other.closed_, false);
        }
        return *this;
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    ~Stream() { close(); }

    /// The next element, waiting for it (with the GIL released, if this thread holds
    /// it); std::nullopt at the end or after close(). Throws the stream's error once
    /// the elements before it have been read.
    std::optional<R> next() {
        if (local_.empty() && !refill(true)) return std::nullopt;
        return pop();
    }

    /// The next element if one is there now; std::nullopt otherwise (see done()).
    /// Throws the stream's error once the elements before it have been read.
    std::optional<R> try_next() {
        if (local_.empty() && !refill(false)) return std::nullopt;
        return pop();
    }

    /// True once every element has been read and the stream has ended (or after close()).
    bool done() const {
        if (closed_ || !core_) return true;
        if (!local_.empty()) return false;
        std::lock_guard<std::mutex> lock(core_->mutex_);
        return core_->ended_ && core_->buffer_.empty();
    }

    /// Stops the stream now: elements not yet read are dropped, next() returns
    /// std::nullopt from here on, and the executor closes the generator at its next
    /// step. Idempotent.
    void close() noexcept {
        if (core_ && !closed_) {
            closed_ = true;
            local_.clear();
            core_->close();
        }
    }

    /// The element count the Python side announced (operator.length_hint of the
    /// iterable: len() of a list or range, __length_hint__ of an iterator), once the
    /// stream has started; std::nullopt before, or when it announced none (a generator).
    std::optional<std::size_t> size_hint() const { return core_ ? core_->size_hint() : std::nullopt; }

    /// Elements read so far.
    std::uint64_t read() const noexcept { return read_; }

    /// A future of element `i`, made ready when the element is produced (a copy of it;
    /// the stream still delivers it to next()), so that items can depend on single
    /// elements. Fails with std::out_of_range when the stream ends before element `i`,
    /// or with the stream's error. The generator runs only as far as the buffer lets
    /// it: elements further than StreamOptions::buffer ahead of what was read arrive as
    /// the stream is read. Throws std::invalid_argument for an element already read.
    SharedFuture<R> element(std::size_t i)
        requires std::copy_constructible<R>
    {
        check();
        using State = typename detail::StreamCore<R>::State;
        if (i < read_) {
            throw std::invalid_argument(core_->where_ + ": element " + std::to_string(i) +
                                        " of the stream was already read (" + std::to_string(read_) +
                                        " read); ask for element futures before reading that far");
        }
        State* state = detail::StreamCore<R>::new_state();  // the stream's reference
        std::optional<R> value;
        std::exception_ptr error;
        {
            std::lock_guard<std::mutex> lock(core_->mutex_);
            const std::uint64_t produced = core_->produced_.load(std::memory_order_relaxed);
            if (i < read_ + local_.size()) {
                value.emplace(local_[i - read_]);
            } else if (i < produced) {
                value.emplace(core_->buffer_[i - read_ - local_.size()]);
            } else if (core_->ended_) {
                error = core_->end_error_ ? core_->end_error_ : core_->ended_before(i, produced);
            } else {
                auto [it, inserted] = core_->promised_.emplace(i, state);  // the stream's reference
                if (!inserted) {  // asked for before: share that state
                    state->release();
                    state = it->second;
                }
                return state->make_future().share();
            }
        }
        if (value) {
            state->set_value(std::move(*value));
        } else {
            state->set_exception(error);
        }
        SharedFuture<R> f = state->make_future().share();
        state->release();
        return f;
    }

    /// False for a default-constructed or moved-from stream.
    bool valid() const noexcept { return core_ != nullptr; }

    /// Input iteration: `for (long x : stream)` reads with next() until the end.
    class iterator {
    public:
        using value_type = R;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        R& operator*() { return *current_; }
        iterator& operator++() {
            current_ = stream_->next();
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept { return !it.current_; }

    private:
        friend class Stream;
        explicit iterator(Stream* s) : stream_(s), current_(s->next()) {}
        Stream* stream_ = nullptr;
        std::optional<R> current_;
    };
    iterator begin() { return iterator(this); }
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    template <class>
    friend class BasicInvokeHandler;
    explicit Stream(std::shared_ptr<detail::StreamCore<R>> core) noexcept : core_(std::move(core)) {}

    void check() const {
        if (!core_) throw std::logic_error("pyscheduler: Stream used after it was moved from (or default-constructed)");
    }

    /// local_ is empty: takes every element the executor has produced, waiting for one
    /// when `wait`. False at the end (or nothing there and not `wait`); throws the
    /// stream's error at the end.
    bool refill(bool wait) {
        check();
        if (closed_) return false;
        detail::StreamCore<R>& core = *core_;
        if (wait) {  // a short spin first: a reader that blocks gets elements one by one, at a wake-up each
            for (int i = 0; i < kSpins && core.produced_.load(std::memory_order_acquire) == read_; ++i) {
                std::this_thread::yield();
            }
        }
        std::unique_lock<std::mutex> lock(core.mutex_);
        if (wait && core.buffer_.empty() && !core.ended_) {
            lock.unlock();
            detail::GilRelease unlocked;  // the executor may need this thread's GIL
            lock.lock();
            core.reader_blocked_.store(true, std::memory_order_relaxed);
            core.cv_.wait(lock, [&] { return !core.buffer_.empty() || core.ended_; });
            core.reader_blocked_.store(false, std::memory_order_relaxed);
        }
        if (core.buffer_.empty()) {
            if (core.ended_ && core.end_error_) std::rethrow_exception(core.end_error_);
            return false;
        }
        local_.swap(core.buffer_);
        return true;
    }

    R pop() {
        R v = std::move(local_.front());
        local_.pop_front();
        core_->mark_read(++read_);
        return v;
    }

    /// Yields next() spends looking for elements before it blocks.
    static constexpr int kSpins = 16;

    std::shared_ptr<detail::StreamCore<R>> core_;
    std::deque<R> local_;  // taken from the core in one go; read without its lock
    std::uint64_t read_ = 0;
    bool closed_ = false;
};

}  // namespace pyscheduler
