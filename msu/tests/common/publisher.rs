//! Real ffmpeg as a publisher's SFU: H264 (payload type 108) and Opus (111)
//! RTP from ffmpeg's test sources, sent in real time to one UDP port on
//! loopback. Shared by the tests and the benchmarks (which include this
//! file by its path).

/// What to send.
pub struct Publisher<'a> {
    /// Seconds of media.
    pub secs: u32,
    /// The picture size, as ffmpeg's `testsrc` takes it (`640x360`).
    pub size: &'a str,
    /// Frames from one key frame to the next (25 fps).
    pub gop: u32,
    /// The video bitrate (`800k`), or x264's default.
    pub bitrate: Option<&'a str>,
    /// The video SSRC.
    pub video: u32,
    /// The audio SSRC.
    pub audio: u32,
}

impl Publisher<'_> {
    /// The ffmpeg command that sends it to 127.0.0.1:`to` (killed when
    /// dropped).
    pub fn command(&self, to: u16) -> tokio::process::Command {
        let secs = self.secs.to_string();
        let mut c = tokio::process::Command::new("ffmpeg");
        c.args(["-hide_banner", "-loglevel", "error"])
            .args(["-re", "-t", &secs, "-f", "lavfi"])
            .args(["-i", &format!("testsrc=size={}:rate=25", self.size)])
            .args(["-re", "-t", &secs, "-f", "lavfi"])
            .args(["-i", "sine=frequency=440:sample_rate=48000"])
            .args(["-map", "0:v", "-c:v", "libx264", "-profile:v", "baseline"])
            .args(["-tune", "zerolatency", "-pix_fmt", "yuv420p"]);
        if let Some(b) = self.bitrate {
            c.args(["-b:v", b]);
        }
        c.args(["-g", &self.gop.to_string(), "-payload_type", "108"])
            .args(["-ssrc", &self.video.to_string(), "-f", "rtp"])
            .arg(format!("rtp://127.0.0.1:{to}?pkt_size=1200"))
            .args(["-map", "1:a", "-c:a", "libopus", "-payload_type", "111"])
            .args(["-ssrc", &self.audio.to_string(), "-f", "rtp"])
            .arg(format!("rtp://127.0.0.1:{to}"))
            .kill_on_drop(true);
        c
    }
}
