// pyscheduler/detail/process.hpp - InterpreterKind::Process: a worker that runs the
// handler's function in a child process.
//
// A process worker is an ordinary executor of the pipeline whose "function" is a
// proxy object of the main interpreter (ProcessWorker below, in Python). Calling it
// sends the call to the worker's child process and waits for the reply with the GIL
// released; everything else (commit, conversion, callbacks, per-item errors, stats)
// is the pipeline's usual path.
//
// The child is the embedded environment's own python (sys.executable), started with
// posix_spawn and `-c <the child's source>`: nothing needs to be installed. It gets
// the host's sys.path, imports the module and serves calls until told to quit or
// until its connection closes. It asks the kernel to kill it when the host dies
// (PR_SET_PDEATHSIG). That signal follows the *thread* that spawned the child, so
// every child is spawned by one thread that lives as long as the process (Spawner).
//
// Transport: an AF_UNIX SOCK_SEQPACKET socket pair carries small fixed headers (the
// wake-ups, and the file descriptors of new segments). A small payload (a pickle of
// at most 16 KiB with the header, nothing out of band: most batches of small items)
// rides in the header's message; any other goes through shared memory, one memfd
// segment per direction, written by its sender. A payload is pickled with protocol 5:
// large buffers (numpy arrays, bytearrays, anything pickle 5 serializes out of band,
// and DLPack tensors on the CPU, which _Pickler turns into numpy arrays viewing them)
// are copied once, into the segment, and read as views of it by the
// receiver, with no further copy. A segment is reused only when the receiver
// holds no view of it any more (it says so in its next header); otherwise, or when a
// payload does not fit, the sender makes a new one and sends its descriptor along.
// Small buffers (< 4 KiB) stay inside the pickle.
#pragma once

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <unistd.h>

#include <pybind11/pybind11.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/gil.hpp"
#include "pyscheduler/detail/interpreter.hpp"

extern char** environ;

namespace pyscheduler::detail {

namespace py = pybind11;

/// The one thread that spawns every worker process: a child's PR_SET_PDEATHSIG fires
/// when the thread that spawned it ends, so that thread must live until the process
/// exits. Started on first use; never joined or destroyed (it parks between requests
/// and ends with the process). It blocks every signal, so none is delivered to it.
class PYSCHEDULER_HIDDEN Spawner {
public:
    static Spawner& instance() {
        static Spawner* spawner = new Spawner();  // leaked on purpose: see above
        return *spawner;
    }

    /// Starts `argv[0]` with `argv`, the process's environment, every signal at its
    /// default and unblocked, and `fd` as the child's descriptor 3 (no other descriptor
    /// of ours is inherited: they are all close-on-exec). Returns the pid, or -errno.
    pid_t spawn(const std::vector<std::string>& argv, int fd) {
        Request request{&argv, fd};
        std::unique_lock<std::mutex> lock(mutex_);
        pending_.push_back(&request);
        cv_.notify_all();
        cv_.wait(lock, [&] { return request.done; });
        return request.result;
    }

private:
    struct Request {
        const std::vector<std::string>* argv;
        int fd;
        pid_t result = 0;
        bool done = false;
    };

    Spawner() {
        std::thread thread([this] { run(); });
        name_thread(thread, "pys-spawner");
        thread.detach();
    }

    void run() {
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, nullptr);
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            cv_.wait(lock, [&] { return !pending_.empty(); });
            std::vector<Request*> taken;
            taken.swap(pending_);
            lock.unlock();
            for (Request* r : taken) r->result = spawn_now(*r->argv, r->fd);
            lock.lock();
            for (Request* r : taken) r->done = true;
            cv_.notify_all();
        }
    }

    static pid_t spawn_now(const std::vector<std::string>& argv, int fd) {
        // A descriptor above 3 to dup2 from: dup2(3, 3) would keep it close-on-exec.
        const int high = fcntl(fd, F_DUPFD_CLOEXEC, 10);
        if (high < 0) return -errno;
        std::vector<char*> args;
        for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawnattr_t attr;
        posix_spawn_file_actions_init(&actions);
        posix_spawnattr_init(&attr);
        posix_spawn_file_actions_adddup2(&actions, high, 3);
        sigset_t none;
        sigset_t all;
        sigemptyset(&none);
        sigfillset(&all);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &all);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        pid_t pid = 0;
        const int rc = posix_spawn(&pid, args[0], &actions, &attr, args.data(), environ);
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&actions);
        close(high);
        return rc == 0 ? pid : -rc;
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    std::vector<Request*> pending_;
};

/// Framing shared by the host and the child (see the top of this file).
inline constexpr const char* kProcessCommonSource = R"PY(
import array, importlib, io, mmap, os, pickle, socket, struct, sys, time

HEADER = struct.Struct("<cBxxIQQ")  # kind, flags, out-of-band buffers, messages read, pickle length
NEW_SEGMENT = 1     # a descriptor comes with the header: the sender's new segment
READER_HOLDS = 2    # the sender still holds views of the last segment it received
INLINE = 4          # the payload follows the header in the message (no segment)
POLL = 8            # a call: the host has a core for each worker process and more (the child may poll)
ALIGN = 64
MIN_SEGMENT = 1 << 20
INLINE_BELOW = 4096
BUSY_YIELD = 3e-6  # a sched_yield() that took longer ran another thread
MESSAGE_MAX = 16384  # a message: the header, and an inline payload of up to the rest
FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)  # one descriptor


def _align(n):
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _from_dlpack(package, array):
    """Receiver: `array` (a view of shared memory) as a tensor of `package` through
    its from_dlpack (torch.from_dlpack, say), without a copy; the array itself when
    the package has none (a pyscheduler.Tensor arrives as a numpy array)."""
    if package not in ("numpy", "pyscheduler"):
        try:
            return importlib.import_module(package).from_dlpack(array)
        except (ImportError, AttributeError):
            pass
    return array


class _Pickler(pickle.Pickler):
    """Pickle protocol 5, where DLPack tensors on the CPU travel as a numpy array
    viewing their memory: out of band, like numpy arrays (one copy each way), and
    rebuilt on the other side as their own type. That holds for a pyscheduler.Tensor
    and a torch.Tensor (exactly that type: a subclass keeps its own pickling), and,
    with `dlpack_all` (the second try after pickle refused an object), for any DLPack
    object that is not a numpy array."""

    dlpack_all = False

    def reducer_override(self, obj):
        kind = type(obj)
        if not hasattr(kind, "__dlpack__"):
            return NotImplemented
        package = kind.__module__.partition(".")[0]
        always = package == "pyscheduler" or (package == "torch" and kind.__qualname__ == "Tensor")
        if not always and (not self.dlpack_all or package == "numpy" or isinstance(obj, _numpy_array_type())):
            return NotImplemented
        try:
            device = obj.__dlpack_device__()[0]
        except Exception:
            return NotImplemented
        if device != 1:  # kDLCPU
            if package == "pyscheduler":
                raise TypeError(f"a pyscheduler.Tensor on DLPack device type {device} cannot travel to or from "
                                "a worker process: only CPU tensors do (through shared memory); copy it to the "
                                "host first")
            return NotImplemented  # as the package pickles it (torch copies a CUDA tensor through the CPU)
        try:
            import numpy
            array = numpy.from_dlpack(obj)
        except Exception as e:
            if package == "pyscheduler":
                raise TypeError(f"a pyscheduler.Tensor cannot travel to a worker process without numpy "
                                f"(numpy.from_dlpack failed: {e})") from None
            return NotImplemented  # a torch tensor that requires grad, say: torch pickles it
        return _from_dlpack, (package, array)


def _numpy_array_type():
    numpy = sys.modules.get("numpy")
    return numpy.ndarray if numpy is not None else ()


class Channel:
    """One end of a worker's connection: a SOCK_SEQPACKET socket for headers and
    descriptors, one shared-memory segment per direction for payloads."""

    def __init__(self, sock):
        self.sock = sock
        self.out = None            # the segment this end writes
        self.peer_holds = False    # the peer still reads views of self.out
        self.inp = None            # the segment the peer writes
        self.peer_says_poll = False  # the last message received had POLL
        self.sent_inline = False     # the last message sent carried its payload (no segment)
        # A segment is written again only once the peer has read the message written
        # there last: the peer says in each header how many messages it has read whole.
        # Calls sent ahead make that needed: a worker that finds its next call waiting
        # replies again before the host has read the reply before.
        self.sent = 0                # messages this end has sent
        self.received = 0            # messages this end has read whole
        self.out_written = 0         # the number of the last message written into self.out
        self.peer_received = 0       # messages the peer had read when it sent its last one
        self._file = io.BytesIO()  # the pickler writes here (both reused from call to call)
        self._buffers = []
        self._pickler = _Pickler(self._file, protocol=5, buffer_callback=self._out_of_band)

    def _out_of_band(self, pb):
        raw = pb.raw()
        if raw.nbytes < INLINE_BELOW:
            return True
        self._buffers.append(raw)
        return False

    def holding(self):
        # The views handed out by receive() each hold a reference to the mapping;
        # self.inp and getrefcount's argument are the other two.
        return self.inp is not None and sys.getrefcount(self.inp) > 2

    def send(self, kind, box, flags=0):
        """Sends box's one object, taken out of it: once the object is copied into the
        segment, this end holds no reference to it (it may hold views of self.inp).
        `flags`: POLL or 0, for the receiver."""
        obj = box.pop()
        try:
            try:
                data = self._pickle(obj, dlpack_all=False)
            except (pickle.PicklingError, TypeError, AttributeError) as refused:
                try:  # DLPack objects that pickle refuses may still travel as their buffers
                    data = self._pickle(obj, dlpack_all=True)
                except BaseException:
                    raise refused from None
            del obj
            self._send_pickled(kind, data, self._buffers, flags)
        finally:
            self._buffers.clear()

    def _pickle(self, obj, dlpack_all):
        f, p = self._file, self._pickler
        f.seek(0)
        f.truncate()
        self._buffers.clear()
        p.dlpack_all = dlpack_all
        try:
            p.dump(obj)
        finally:
            p.clear_memo()  # it holds what it pickled
        return f.getvalue()

    def _send_pickled(self, kind, data, buffers, flags):
        if not buffers and len(data) <= MESSAGE_MAX - HEADER.size:
            # Small, nothing out of band: one message carries it, no segment is touched.
            flags |= INLINE | (READER_HOLDS if self.holding() else 0)
            self.sock.sendmsg([HEADER.pack(kind, flags, 0, self.received, len(data)), data], [],
                              socket.MSG_NOSIGNAL)
            self.sent += 1
            self.sent_inline = True
            return
        self.sent_inline = False
        sizes = [b.nbytes for b in buffers]
        table = 8 * len(sizes)
        need = _align(table + len(data)) + sum(_align(s) for s in sizes)
        fds = []
        if self.out is None or self.peer_holds or self.peer_received < self.out_written or len(self.out) < need:
            size = max(MIN_SEGMENT, 1 << (need - 1).bit_length())
            fd = os.memfd_create("pyscheduler", os.MFD_CLOEXEC)
            fds.append(fd)
            try:
                os.ftruncate(fd, size)
                self.out = mmap.mmap(fd, size)
            except BaseException:
                os.close(fd)
                raise
            self.peer_holds = False
            flags |= NEW_SEGMENT
        try:
            m = self.out
            if sizes:
                struct.pack_into(f"<{len(sizes)}Q", m, 0, *sizes)
            m[table:table + len(data)] = data
            _copy_buffers(m, _align(table + len(data)), buffers)
            buffers.clear()
            if self.holding():
                flags |= READER_HOLDS
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            self.sock.sendmsg([HEADER.pack(kind, flags, len(sizes), self.received, len(data))], ancillary,
                              socket.MSG_NOSIGNAL)
            self.sent += 1
            self.out_written = self.sent
        finally:
            for fd in fds:
                os.close(fd)

    def _recvmsg(self, flags=0):
        # A peer that closed its end with messages of this end unread (calls sent
        # ahead, behind the one its process died in) makes Linux report ECONNRESET,
        # once, before the messages the peer sent before it closed: those still come,
        # then the end of the connection.
        try:
            return self.sock.recvmsg(MESSAGE_MAX, FD_SPACE, flags)
        except ConnectionResetError:
            return self.sock.recvmsg(MESSAGE_MAX, FD_SPACE, flags)

    def receive(self, poll_for=0.0):
        """(kind, object); EOFError when the peer has closed its end. Polls for up to
        poll_for seconds before it blocks."""
        if poll_for > 0:
            until = time.perf_counter() + poll_for
            while True:
                try:
                    message, ancillary, _, _ = self._recvmsg(socket.MSG_DONTWAIT)
                    break
                except BlockingIOError:
                    yielded = time.perf_counter()
                    os.sched_yield()  # the core goes to the host's threads when they need it
                    now = time.perf_counter()
                    # Past the deadline, or the yield ran another thread (the cores are
                    # busy: whoever sends will find one to wake this process on): park.
                    if now > until or now - yielded > BUSY_YIELD:
                        message, ancillary, _, _ = self._recvmsg()
                        break
        else:
            message, ancillary, _, _ = self._recvmsg()
        if not message:
            raise EOFError
        kind, flags, count, self.peer_received, length = HEADER.unpack_from(message)
        for level, type_, data in ancillary:  # SCM_RIGHTS: the sender's new segment
            fd = array.array("i", data)[0]
            try:
                self.inp = mmap.mmap(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
        self.peer_holds = bool(flags & READER_HOLDS)
        self.peer_says_poll = bool(flags & POLL)
        try:
            if flags & INLINE:
                return kind, pickle.loads(memoryview(message)[HEADER.size:HEADER.size + length])
            m = self.inp
            sizes = struct.unpack_from(f"<{count}Q", m, 0) if count else ()
            table = 8 * count
            data = m[table:table + length]
            views = []
            at = _align(table + length)
            for s in sizes:
                views.append(memoryview(m)[at:at + s])
                at = _align(at + s)
            return kind, pickle.loads(data, buffers=views)
        finally:  # read whole (the views that the result keeps are READER_HOLDS's)
            self.received += 1


def _copy_buffers(m, at, buffers):
    for b in buffers:
        m[at:at + b.nbytes] = b
        at = _align(at + b.nbytes)


def describe(e):
    """An exception as (picklable exception or None, type name, message, traceback text)."""
    import traceback
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    name = type(e).__qualname__
    if type(e).__module__ != "builtins":
        name = type(e).__module__ + "." + name
    try:
        message = str(e)
    except Exception:
        message = "<str() of the exception raised>"
    e.__traceback__ = None
    try:
        pickle.loads(pickle.dumps(e, protocol=5))
    except Exception:
        e = None
    return e, name, message, text
)PY";

/// The child: `python -c <HOST_MODULE = ... + common + this> <parent pid>`, its
/// connection on descriptor 3.
inline constexpr const char* kProcessChildSource = R"PY(

# Waking a parked process costs tens of microseconds on a virtual machine (about 45 us of
# a 66 us round trip measured on a 2-vCPU VM), so while calls come close together the
# child polls before it parks: for twice the moving average of its recent waits, when
# that average is at most POLL_LIMIT seconds (the pipeline's IdleBudget, in Python), and
# only after a call that came with POLL: the host sets it while it has fewer worker
# processes (every handler's) than cores. A polling child holds a core; with a busy
# worker on every core, that core is what the host needs to send the next calls
# (measured with two workers on 2 vCPUs, 26 us items: 38 us an item without polling,
# 50 with it; one worker: 78 with polling, 127 without; see README, Process workers).
# It stops polling as soon as a yield ran another thread (Channel.receive): then the
# cores are busy, and every further yield would be a context switch taken from the
# host's threads (measured at 26 us items on 2 vCPUs: 7.8 yields an item before).
POLL_LIMIT = 200e-6


def main():
    import ctypes, signal
    # Pickles name _from_dlpack by the host module's name: here, that is this module.
    sys.modules[HOST_MODULE] = sys.modules[__name__]
    _from_dlpack.__module__ = HOST_MODULE
    parent = int(sys.argv[1])
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the host
    except Exception:
        pass
    if os.getppid() != parent:  # the host died before the line above
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's to handle
    os.set_inheritable(3, False)
    channel = Channel(socket.socket(fileno=3))
    try:
        kind, (path, module, function) = channel.receive()
    except EOFError:
        return
    sys.path[:] = path
    try:
        fn = getattr(importlib.import_module(module), function)
        if not callable(fn):
            raise TypeError(f"{module}.{function} is not callable (it is a {type(fn).__name__})")
    except BaseException as e:
        channel.send(b"E", [describe(e)])
        return
    channel.send(b"R", [os.getpid()])
    average_wait = 1.0  # as if idle: no polling yet
    while True:
        started = time.perf_counter()
        try:
            poll = average_wait <= POLL_LIMIT and channel.peer_says_poll
            kind, args = channel.receive(2 * average_wait if poll else 0.0)
        except EOFError:
            return
        average_wait += (time.perf_counter() - started - average_wait) / 4
        if kind == b"Q":
            return
        try:
            box = [fn(*args)]  # the result's one reference: send() takes it out
        except BaseException as e:
            del args
            channel.send(b"E", [describe(e)])
            continue
        del args
        try:
            channel.send(b"R", box)
        except BaseException as e:
            box.clear()
            channel.send(b"E", [describe(e)])


main()
)PY";

/// The name of the host module (the sources above run in it, in the main interpreter).
inline constexpr const char* kProcessHostModule = "_pyscheduler_process_v1";

/// The host side, run once in the main interpreter as module kProcessHostModule.
inline constexpr const char* kProcessHostSource = R"PY(
import collections, select, signal, threading, time


class WorkerLost(Exception):
    """The worker process died, or closed its connection, while it had a call."""


class CallTimeout(Exception):
    """A call ran longer than HandlerOptions::call_timeout; its worker was killed."""


class RemoteTraceback(Exception):
    def __str__(self):
        return self.args[0]


class RemoteError(Exception):
    """An exception of the worker that could not be pickled: its type name and message."""


def _status(status):
    if os.WIFSIGNALED(status):
        n = os.WTERMSIG(status)
        try:
            name = signal.Signals(n).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {n} ({name})"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended with wait status {status}"


_CORES = len(os.sched_getaffinity(0))
_workers_lock = threading.Lock()
_workers = 0  # ProcessWorkers started and not closed, every handler's


def _count_worker(delta):
    global _workers
    with _workers_lock:
        _workers += delta


def _poll_flag():
    """POLL while the host has a core for each worker process and more (see POLL_LIMIT)."""
    return POLL if _workers < _CORES else 0


class ProcessWorker:
    """The function of one InterpreterKind::Process worker: calling it runs the
    function in the worker's child process. Calls are serialized."""

    def __init__(self, spawn, name, index, module, function, max_restarts, call_timeout):
        self._spawn = spawn
        self._name = f"{name} (process worker {index})"
        self._module = module
        self._function = function
        self._max_restarts = max_restarts
        self._timeout_ms = None if call_timeout <= 0 else max(1, round(call_timeout * 1000))
        self._call_timeout = call_timeout
        self._lock = threading.Lock()
        self._flight = collections.deque()  # [arguments, channel sent on] of each call started, not finished
        self._owner = None  # the thread that holds _lock: it started the calls in flight
        self._running_since = time.monotonic()
        self._channel = None
        self._pid = None
        self.pid = None
        self._restarts_in_a_row = 0
        self._last_loss = ""
        self.restarts = 0
        self._start()
        self._counted = True
        _count_worker(1)

    def _start(self):
        """Spawns the child and waits until it has imported the function. A child that
        reports an import error raises ImportError; one that dies raises WorkerLost."""
        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._pid = self._spawn([sys.executable, "-c", CHILD_SOURCE, str(os.getpid())], child.fileno())
        except BaseException:
            host.close()
            raise
        finally:
            child.close()
        channel = Channel(host)
        try:
            channel.send(b"I", [(list(sys.path), self._module, self._function)])
            kind, reply = self._receive(channel, None, "while importing the module")
        except BaseException:
            host.close()
            self._reap(kill=True)
            raise
        if kind == b"E":
            host.close()
            self._reap(kill=True)
            error, type_name, message, text = reply
            raise ImportError(f"in the worker process: {type_name}: {message}\n{text}".rstrip())
        self._channel = channel
        self.pid = reply

    def __call__(self, *args):
        self.start(*args)
        return self.finish()

    def start(self, *args):
        """Sends a call; finish() returns its result. More calls may be started
        before the first finishes (the executor keeps its worker busy that way): the
        child runs calls one at a time, in the order sent, and finds the next one
        waiting when it sends a reply. Only behind a call that went inline: one sent
        through the segment may still be read by the child (its arguments view it),
        and the next call would overwrite it. Returns whether this call went inline.
        While calls are in flight the thread that started them holds the worker's
        lock, so that a call from another thread waits for them."""
        me = threading.get_ident()
        first = self._owner != me  # only the owner changes _owner: reading it unlocked is safe
        if first:
            self._lock.acquire()
            self._owner = me
        try:
            if first:
                channel = self._send_call(args)
            else:
                channel = self._channel
                try:  # an argument that cannot be pickled raises here, before anything is sent
                    if channel is not None:
                        channel.send(b"C", [args], _poll_flag())
                except ConnectionError:  # finish() of the call before reads what the process left
                    channel = None
        except BaseException:
            if first:
                self._release()
            raise
        # With a channel of None (the process died during the call before this one),
        # finish() sends it to the next process, once it has failed the earlier call.
        self._flight.append([args, channel])
        if first:
            self._running_since = time.monotonic()
        return channel is not None and channel.sent_inline

    def finish(self):
        """The result of the oldest call in flight; raises its exception, WorkerLost
        when the process died during it, or CallTimeout. A call that never reached a
        live process (the one before it lost it) is sent to a new one first."""
        entry = self._flight[0]
        try:
            args, channel = entry
            if channel is None or channel is not self._channel:
                channel = entry[1] = self._send_call(args)
                self._running_since = time.monotonic()
            del args
            timeout_ms = None
            if self._timeout_ms is not None:  # counted from when this call began to run
                left = self._call_timeout - (time.monotonic() - self._running_since)
                timeout_ms = max(0, round(left * 1000))
            kind, reply = self._receive(channel, timeout_ms, "while running a call")
        finally:
            entry.clear()
            self._flight.popleft()
            self._running_since = time.monotonic()  # the next call in flight runs from now
            if not self._flight:
                self._release()
        self._restarts_in_a_row = 0
        if kind == b"E":
            error, type_name, message, text = reply
            if error is None:
                error = RemoteError(f"{type_name}: {message}")
            raise error from RemoteTraceback(text)
        return reply

    def _release(self):
        self._owner = None
        self._lock.release()

    def _send_call(self, args):
        """Sends a call to the live process; starts one first when there is none, or
        when it died while idle (no call was lost). Returns its channel."""
        if self._channel is None:
            self._restart()
        flags = _poll_flag()
        try:  # an argument that cannot be pickled raises here, before anything is sent
            self._channel.send(b"C", [args], flags)
        except ConnectionError:
            self._lose(self._channel)
            self._restart()
            self._channel.send(b"C", [args], flags)
        return self._channel

    def _receive(self, channel, timeout_ms, doing):
        if timeout_ms is not None:
            poll = select.poll()
            poll.register(channel.sock, select.POLLIN)
            if not poll.poll(timeout_ms):
                self._lose(channel)
                raise CallTimeout(f"{self._name}: the call ran longer than call_timeout "
                                  f"({self._call_timeout:g} s); its worker process was killed")
        try:
            return channel.receive()
        except (EOFError, ConnectionError):
            status = self._lose(channel)
            raise WorkerLost(f"{self._name}: the worker process {status} {doing}") from None

    def _lose(self, channel):
        """The child is gone or must go: kills and reaps it; the next call restarts it."""
        channel.sock.close()
        if channel is self._channel:
            self._channel = None
        self._last_loss = self._reap(kill=True)
        return self._last_loss

    def _reap(self, kill):
        pid, self._pid = self._pid, None
        if kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored, or a reaper of the host's)
            return f"{pid} ended (its exit status is unknown)"
        return f"{pid} {_status(status)}"

    def _restart(self):
        if self._restarts_in_a_row >= self._max_restarts:
            raise WorkerLost(f"{self._name}: the worker process is down: restarted {self._restarts_in_a_row} "
                             f"times in a row without a successful call (max_restarts {self._max_restarts}); "
                             f"the last worker process {self._last_loss}")
        self._restarts_in_a_row += 1
        time.sleep(min(0.05 * 2 ** (self._restarts_in_a_row - 1), 2.0))  # backoff; the GIL is released
        try:
            self._start()
        except BaseException as e:
            self._last_loss = f"could not be started: {e}"
            raise WorkerLost(f"{self._name}: restarting the worker process failed: {e}") from None
        self.restarts += 1

    def close(self):
        """Tells the child to quit and waits for it (killing it after 5 s)."""
        with self._lock:
            if self._counted:
                self._counted = False
                _count_worker(-1)
            channel, self._channel = self._channel, None
            if channel is None:
                return
            try:
                channel.send(b"Q", [None])
                poll = select.poll()
                poll.register(channel.sock, select.POLLIN)
                kill = not poll.poll(5000)
            except OSError:
                kill = True
            channel.sock.close()
            self._reap(kill)
)PY";

/// GIL held. The host module, made on first use (one per process: every copy of
/// these headers shares it through sys.modules).
inline py::module_ process_host_module() {
    py::dict modules = py::module_::import("sys").attr("modules");
    if (modules.contains(kProcessHostModule)) return modules[kProcessHostModule];
    py::module_ m = py::reinterpret_steal<py::module_>(PyModule_New(kProcessHostModule));
    if (!m) throw py::error_already_set();
    m.attr("__builtins__") = py::module_::import("builtins");
    py::exec(std::string(kProcessCommonSource) + kProcessHostSource, m.attr("__dict__"));
    m.attr("CHILD_SOURCE") = "HOST_MODULE = \"" + std::string(kProcessHostModule) + "\"\n" + kProcessCommonSource +
                             kProcessChildSource;
    m.attr("spawn") = py::cpp_function([](const py::list& argv, int fd) {
        std::vector<std::string> args;
        for (py::handle a : argv) args.push_back(path_from_python(a));
        pid_t pid = 0;
        {
            GilRelease unlocked;
            pid = Spawner::instance().spawn(args, fd);
        }
        if (pid < 0) {
            errno = -pid;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, args.front().c_str());
            throw py::error_already_set();
        }
        return pid;
    });
    modules[kProcessHostModule] = m;
    return m;
}

/// The most calls a process worker's executor keeps in flight: the one running and
/// the ones waiting behind it in the child's socket. Two left the child waiting for
/// the host's next call at small items (a call is sent when the oldest one's reply
/// has been read, and waking the host's executor on a busy 2-vCPU machine takes longer
/// than a 50 us call); four keep it busy through such waits, as a
/// multiprocessing.Pool's queue of sent tasks does.
inline constexpr std::size_t kProcessCallsInFlight = 4;

/// GIL held. A started worker process serving `module.function`, as the callable a
/// pipeline worker calls. Throws std::invalid_argument when the child cannot import it.
inline py::object start_process_worker(const std::string& module, const std::string& function,
                                       const std::string& name, std::size_t index, int max_restarts,
                                       double call_timeout_seconds) {
    py::module_ host = process_host_module();
    try {
        return host.attr("ProcessWorker")(host.attr("spawn"), name, index, module, function, max_restarts,
                                          call_timeout_seconds);
    } catch (const py::error_already_set& e) {
        throw std::invalid_argument("pyscheduler: cannot load " + name + ": " +
                                    to_python_error(e, "starting worker process " + std::to_string(index)).what());
    }
}

}  // namespace pyscheduler::detail
