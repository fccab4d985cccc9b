//! Buffer policy: how large the send and receive buffers are while handshaking, streaming
//! and idle, and when an idle connection gives its buffers back.

use super::*;

impl<O: Observer> Engine<O> {
    /// Whether the buffers hold more than an idle connection keeps.
    pub(super) fn holds_more_than_idle(&self) -> bool {
        self.rx.len() > RX_IDLE || !self.tx.is_empty()
    }

    /// Arms the deadline to look at the buffers in [`QUIET_AFTER_MS`].
    pub(super) fn watch_quiet(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        let (receives, sends) = {
            let m = conn.mailbox.lock();
            (m.counters.record_receives, m.counters.record_sends)
        };
        if Deadline::arm(&self.deadline, worker.clone(), QUIET_AFTER_MS).is_ok() {
            self.timer = Timer::Quiet { receives, sends };
        }
    }

    /// The quiet deadline expired. With nothing received or sent the whole time, the buffers
    /// go back to an idle connection's: the send buffer is freed (if nothing uses it) and a
    /// receive waiting with a bigger buffer is cancelled and reposted with [`RX_IDLE`].
    /// Otherwise look again later.
    pub(super) fn quiet_check(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        let Timer::Quiet { receives, sends } = self.timer else {
            return;
        };
        self.timer = Timer::Idle;
        let armed_at = (receives, sends);
        if self.phase != Phase::Open || !self.holds_more_than_idle() {
            return;
        }
        let (traffic, queued) = {
            let m = conn.mailbox.lock();
            (
                (m.counters.record_receives, m.counters.record_sends),
                m.outgoing.len(),
            )
        };
        if traffic != armed_at {
            self.watch_quiet(conn, worker);
            return;
        }
        if !self.tx.is_empty()
            && self.send.is_idle()
            && self.pending_token == 0
            && queued == 0
            && self.exchange != Exchange::PostHandshake
        {
            self.tx = Buffer::EMPTY;
        }
        if self.rx.len() > RX_IDLE
            && self.rx_len <= RX_IDLE
            && self.recv.is_pending()
            && self.exchange != Exchange::PostHandshake
        {
            self.shrinking = true;
            self.rx_wanted = RX_IDLE;
            self.recv.cancel();
        } else if self.holds_more_than_idle() && self.recv.is_pending() {
            // A record half in, or a send still going: look again later.
            self.watch_quiet(conn, worker);
        }
        // Otherwise the next receive arms the watch again.
    }

    /// Makes the send buffer at least `at_least` bytes (an idle connection has none); false if
    /// it is smaller and cannot grow now (a send or token still uses it, or no pool).
    pub(super) fn send_room(&mut self, at_least: usize) -> bool {
        if self.tx.len() < at_least {
            self.size_send_buffer(at_least);
        }
        self.tx.len() >= at_least
    }

    /// Grows the receive buffer while data streams in and shrinks it once the stream pauses
    /// (only between receives, and never while SSPI may be reading it). A failed allocation
    /// keeps the buffer there is: sizing is an optimisation, never a failure.
    pub(super) fn size_receive_buffer(&mut self) {
        if self.phase != Phase::Open || self.sspi_busy() {
            return;
        }
        let wanted = self.rx_wanted;
        // While a post-handshake message is answered `rx` is ISC/ASC's input: it may only grow
        // (the message needs more room than an idle buffer has).
        if self.exchange == Exchange::PostHandshake && wanted < self.rx.len() {
            return;
        }
        if wanted == self.rx.len() || self.rx_len > wanted {
            return;
        }
        if let Ok(mut bigger_or_smaller) = Buffer::try_new(wanted) {
            let kept = self.rx_len;
            bigger_or_smaller.bytes()[..kept].copy_from_slice(&self.rx.bytes()[..kept]);
            self.rx = bigger_or_smaller;
            self.note_buffers();
        }
    }

    /// As [`Self::size_receive_buffer`], for the send buffer: `wanted` bytes, only while no
    /// send or token uses it.
    pub(super) fn size_send_buffer(&mut self, wanted: usize) {
        if wanted == self.tx.len() || !self.send.is_idle() || self.pending_token > 0 {
            return;
        }
        if let Ok(buffer) = Buffer::try_new(wanted) {
            self.tx = buffer;
            self.note_buffers();
        }
    }

    /// Keeps the high-water mark of the buffers ([`super::Counters::peak_buffer_bytes`]) up to
    /// date: called whenever a buffer is replaced, so a peak that lasts only within one drain
    /// still counts.
    pub(super) fn note_buffers(&mut self) {
        self.peak_buffers = self.peak_buffers.max(self.tx.len() + self.rx.len());
    }
}
