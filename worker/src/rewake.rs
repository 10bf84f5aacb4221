//! Self-wakes absorbed: a connection future woken during its own poll is polled again at
//! once, instead of tokio rescheduling it as a yield and waking a sibling thread to steal it.
//!
//! hyper's HTTP/1 server wakes its own connection task while answering a request (the
//! request body's channel signals the dispatcher, which runs in the same task). On tokio's
//! multi-thread runtime a task notified during its poll is re-queued as a *yield*, and every
//! yield makes the worker unpark a sleeping sibling to steal it; the sibling finds nothing
//! and parks again. On a small call that is one futex wake and two context switches per
//! request (measured: 3.1 context switches per call with two plugin threads, 1.4 with one;
//! a bare hyper server on a 2-thread runtime does the same). [`Rewake`] gives the inner
//! future a waker of its own: a wake that arrives while the inner future is being polled
//! only marks it, and the loop polls it again; a wake at any other time goes to the task's
//! real waker as before. Re-polls are bounded ([`REPOLLS`]) and stop when the task's
//! cooperative budget is spent, so a future that yields on purpose still yields.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Most polls of the inner future in one poll of [`Rewake`]: the first and up to this many
/// minus one re-polls after self-wakes. hyper answers a request with one self-wake; a
/// connection with pipelined requests may need a few.
const REPOLLS: usize = 4;

/// Not being polled: a wake goes to the task's waker.
const IDLE: u8 = 0;
/// Being polled: a wake is recorded ([`WOKEN`]) and the poll loop polls again.
const POLLING: u8 = 1;
/// Woken while being polled.
const WOKEN: u8 = 2;

/// A future whose wakes during its own poll are served by polling it again at once.
pub(crate) struct Rewake<F> {
    future: Pin<Box<F>>,
    shared: Arc<Shared>,
    waker: Waker,
}

/// What the inner future's waker and the poll loop share.
struct Shared {
    state: AtomicU8,
    task: AtomicWaker,
}

impl<F: Future> Rewake<F> {
    /// Wraps `future` (boxed once, so that it can be polled in place).
    pub(crate) fn new(future: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&shared));
        Self {
            future: Box::pin(future),
            shared,
            waker,
        }
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

impl<F: Future> Future for Rewake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.shared.task.register(cx.waker());
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..REPOLLS {
            this.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(output) = this.future.as_mut().poll(&mut inner) {
                this.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(output);
            }
            let settled = this.shared.state.compare_exchange(
                POLLING,
                IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if settled.is_ok() {
                return Poll::Pending;
            }
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        // Woken during the last poll and not polled again: the runtime reschedules the task.
        this.shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes of the task that polls it.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself during each of its first `wakes` polls, then is ready.
    struct SelfWaking {
        wakes: usize,
        polls: usize,
    }

    impl Future for SelfWaking {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.wakes {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn poll_once<F: Future>(future: &mut Rewake<F>) -> (Poll<F::Output>, usize) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let poll = Pin::new(future).poll(&mut Context::from_waker(&waker));
        (poll, counter.0.load(Ordering::SeqCst))
    }

    #[test]
    fn a_self_wake_is_served_by_polling_again_without_waking_the_task() {
        let mut future = Rewake::new(SelfWaking { wakes: 2, polls: 0 });
        let (poll, task_wakes) = poll_once(&mut future);
        assert_eq!(poll, Poll::Ready(3));
        assert_eq!(task_wakes, 0);
    }

    #[test]
    fn without_the_wrapper_the_same_future_wakes_its_task() {
        // Positive control: the plain future does wake the task that polls it.
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut future = SelfWaking { wakes: 2, polls: 0 };
        let poll = Pin::new(&mut future).poll(&mut Context::from_waker(&waker));
        assert_eq!(poll, Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_yields_to_the_runtime() {
        let mut future = Rewake::new(SelfWaking {
            wakes: usize::MAX,
            polls: 0,
        });
        let (poll, task_wakes) = poll_once(&mut future);
        assert_eq!(poll, Poll::Pending);
        assert_eq!(task_wakes, 1);
        assert_eq!(future.future.polls, REPOLLS);
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task() {
        /// Pending until its stored waker is used.
        struct Parked(Option<Waker>);
        impl Future for Parked {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                self.0 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
        let mut future = Rewake::new(Parked(None));
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let poll = Pin::new(&mut future).poll(&mut Context::from_waker(&waker));
        assert_eq!(poll, Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        let stored = future
            .future
            .0
            .take()
            .expect("the inner future kept its waker");
        std::thread::spawn(move || stored.wake()).join().unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    /// A hyper HTTP/1 server connection on `io` that answers each request's body.
    fn echo_connection(
        io: tokio::io::DuplexStream,
    ) -> impl Future<Output = Result<(), hyper::Error>> + Send {
        let service =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let body = http_body_util::BodyExt::collect(req.into_body())
                    .await?
                    .to_bytes();
                Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(body)))
            });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
    }

    /// `future` within 10 s: a lost wake-up would hang it.
    async fn within<F: Future>(future: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(10), future)
            .await
            .expect("a lost wake-up: not done within 10 s")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hyper_connection_served_through_it_answers_on_a_multi_thread_runtime() {
        let (client, server) = tokio::io::duplex(4096);
        let conn = echo_connection(server);
        let served = tokio::spawn(Rewake::new(conn));
        let (mut sender, client_conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                .await
                .unwrap();
        let driving = tokio::spawn(client_conn);
        for n in 0..50 {
            within(sender.ready()).await.unwrap();
            let request = hyper::Request::post("/")
                .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                    "call {n}"
                ))))
                .unwrap();
            let answer = within(sender.send_request(request)).await.unwrap();
            let body = http_body_util::BodyExt::collect(answer.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(body, format!("call {n}"));
        }
        drop(sender);
        driving.await.unwrap().unwrap();
        served.await.unwrap().unwrap();
    }

    /// Wakes of the polling task's waker during one poll of a hyper connection that has a
    /// whole request waiting, plain or through [`Rewake`].
    async fn wakes_answering_one_request(rewake: bool) -> usize {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"POST / HTTP/1.1\r\nhost: w\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let conn = echo_connection(server);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let poll = if rewake {
            Pin::new(&mut Rewake::new(conn)).poll(&mut cx).is_pending()
        } else {
            std::pin::pin!(conn).poll(&mut cx).is_pending()
        };
        assert!(poll, "the connection stays open for the next request");
        let mut answer = vec![0; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut client, &mut answer)
            .await
            .unwrap();
        assert!(answer[..n].ends_with(b"hello"), "answered in that one poll");
        counter.0.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn hyper_wakes_its_own_task_while_answering_and_rewake_absorbs_it() {
        assert!(
            wakes_answering_one_request(false).await >= 1,
            "control: hyper self-wakes"
        );
        assert_eq!(wakes_answering_one_request(true).await, 0);
    }
}
