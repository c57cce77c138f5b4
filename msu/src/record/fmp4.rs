//! A fragmented MP4 file (ISO/IEC 14496-12) of H264 and Opus, written as
//! media arrives: the header (`ftyp`, `moov`) first, then one fragment
//! (`moof` + `mdat`) per second of media. Each fragment is written whole
//! with one `write`, so a process killed at any moment leaves a file that
//! players read up to its last complete fragment. Boxes are encoded by
//! `mp4-atom`; what goes in them is decided here.

use mp4_atom::{
    Audio, Avc1, Avcc, Codec, Dinf, Dops, Dref, Encode, Ftyp, Hdlr, Mdat, Mdhd, Mdia, Mfhd, Minf,
    Moof, Moov, Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsd, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun,
    TrunEntry, TrunSamples, Url, Visual, Vmhd,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What one track of a file carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackKind {
    /// H264 with the parameter sets of its first key frame.
    H264 {
        /// Sequence parameter set (a NAL unit).
        sps: Vec<u8>,
        /// Picture parameter set (a NAL unit).
        pps: Vec<u8>,
        /// Picture width.
        width: u16,
        /// Picture height.
        height: u16,
    },
    /// Opus at 48 kHz.
    Opus {
        /// Output channels (2 for WebRTC's `opus/48000/2`).
        channels: u8,
    },
}

impl TrackKind {
    /// Ticks per second of the track's timestamps (its RTP clock).
    pub fn timescale(&self) -> u32 {
        match self {
            Self::H264 { .. } => 90_000,
            Self::Opus { .. } => 48_000,
        }
    }

    /// The duration given to a last sample whose successor never came.
    fn default_duration(&self) -> u32 {
        match self {
            Self::H264 { .. } => 3_000, // 1/30 s
            Self::Opus { .. } => 960,   // 20 ms
        }
    }
}

/// One sample: a picture (length-prefixed NAL units) or an Opus packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Decode time in the track's timescale, from the file's start.
    pub dts: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// A key frame (always true for audio).
    pub sync: bool,
}

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file system refused (a full disk, a missing directory).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A box could not be encoded (a value out of its range).
    #[error("encoding {0}")]
    Encode(#[from] mp4_atom::Error),
}

const SYNC: u32 = 0x0200_0000; // sample_depends_on = 2 (an I picture)
const NON_SYNC: u32 = 0x0101_0000; // depends on others, not a sync sample

/// Media time a fragment spans before it is written.
const FRAGMENT_SECS: u64 = 1;

struct TrackBuf {
    kind: TrackKind,
    samples: Vec<Sample>,
    last_duration: u32,
}

/// A fragmented MP4 file being written.
pub struct Fmp4File {
    file: std::fs::File,
    path: PathBuf,
    tracks: Vec<TrackBuf>,
    sequence: u32,
    bytes: u64,
    samples_written: Vec<u64>,
}

impl Fmp4File {
    /// Creates `path` (it must not exist) and writes the header for
    /// `tracks` (track ids 1, 2, ... in this order).
    pub fn create(path: &Path, tracks: &[TrackKind]) -> Result<Self, WriteError> {
        let io = |error| WriteError::Io {
            path: path.to_owned(),
            error,
        };
        let mut head = Vec::new();
        Ftyp {
            major_brand: b"iso6".into(),
            minor_version: 512,
            compatible_brands: vec![b"iso6".into(), b"cmfc".into(), b"mp41".into()],
        }
        .encode(&mut head)?;
        moov(tracks)?.encode(&mut head)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        file.write_all(&head).map_err(io)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            tracks: tracks
                .iter()
                .map(|kind| TrackBuf {
                    last_duration: kind.default_duration(),
                    kind: kind.clone(),
                    samples: Vec::new(),
                })
                .collect(),
            sequence: 0,
            bytes: head.len() as u64,
            samples_written: vec![0; tracks.len()],
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Samples written so far, per track.
    pub fn samples_written(&self) -> &[u64] {
        &self.samples_written
    }

    /// Adds a sample to track `track` (its index); writes a fragment when
    /// a track holds a second of media. A sample older than the track's
    /// last is dropped (returns false).
    pub fn push(&mut self, track: usize, sample: Sample) -> Result<bool, WriteError> {
        let Some(t) = self.tracks.get_mut(track) else {
            return Ok(false);
        };
        if t.samples.last().is_some_and(|s| sample.dts <= s.dts) {
            return Ok(false);
        }
        t.samples.push(sample);
        let span = |t: &TrackBuf| match (t.samples.first(), t.samples.last()) {
            (Some(a), Some(b)) => b.dts - a.dts,
            _ => 0,
        };
        if self
            .tracks
            .iter()
            .any(|t| span(t) >= FRAGMENT_SECS * u64::from(t.kind.timescale()))
        {
            self.write_fragment(false)?;
        }
        Ok(true)
    }

    /// Writes what is held and closes the file; returns its size.
    pub fn finish(mut self) -> Result<u64, WriteError> {
        self.write_fragment(true)?;
        self.file.sync_all().map_err(|error| WriteError::Io {
            path: self.path.clone(),
            error,
        })?;
        Ok(self.bytes)
    }

    /// One `moof` + `mdat` of every track's samples but its last (whose
    /// duration the next one tells), or of all of them at the end.
    fn write_fragment(&mut self, last: bool) -> Result<(), WriteError> {
        let mut trafs = Vec::new();
        let mut payloads: Vec<Vec<Sample>> = Vec::new();
        for (i, t) in self.tracks.iter_mut().enumerate() {
            let keep = if last { 0 } else { 1 };
            if t.samples.len() <= keep {
                continue;
            }
            let taken: Vec<Sample> = t.samples.drain(..t.samples.len() - keep).collect();
            let next = t.samples.first().map(|s| s.dts);
            let mut entries = Vec::with_capacity(taken.len());
            for (j, s) in taken.iter().enumerate() {
                let after = taken.get(j + 1).map(|n| n.dts).or(next);
                let duration = match after {
                    Some(a) => u32::try_from(a - s.dts).unwrap_or(u32::MAX),
                    None => t.last_duration,
                };
                t.last_duration = duration;
                entries.push(TrunEntry {
                    duration: Some(duration),
                    size: Some(u32::try_from(s.data.len()).unwrap_or(u32::MAX)),
                    flags: Some(if s.sync { SYNC } else { NON_SYNC }),
                    cts: None,
                });
            }
            let base = taken.first().map_or(0, |s| s.dts);
            self.samples_written[i] += taken.len() as u64;
            trafs.push(Traf {
                tfhd: Tfhd {
                    track_id: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    default_base_is_moof: true,
                    ..Default::default()
                },
                tfdt: Some(Tfdt {
                    base_media_decode_time: base,
                }),
                trun: vec![Trun {
                    data_offset: Some(0),
                    samples: TrunSamples::Explicit(entries),
                }],
                ..Default::default()
            });
            payloads.push(taken);
        }
        if trafs.is_empty() {
            return Ok(());
        }
        self.sequence += 1;
        let mut moof = Moof {
            mfhd: Mfhd {
                sequence_number: self.sequence,
            },
            traf: trafs,
        };
        // The offsets count from the moof's start: its size first.
        let mut probe = Vec::new();
        moof.encode(&mut probe)?;
        let mut offset = probe.len() + 8;
        for (traf, samples) in moof.traf.iter_mut().zip(&payloads) {
            if let Some(run) = traf.trun.first_mut() {
                run.data_offset = Some(i32::try_from(offset).unwrap_or(i32::MAX));
            }
            offset += samples.iter().map(|s| s.data.len()).sum::<usize>();
        }
        let mut out = Vec::with_capacity(offset);
        moof.encode(&mut out)?;
        Mdat {
            data: payloads
                .into_iter()
                .flatten()
                .flat_map(|s| s.data)
                .collect(),
        }
        .encode(&mut out)?;
        self.file.write_all(&out).map_err(|error| WriteError::Io {
            path: self.path.clone(),
            error,
        })?;
        self.bytes += out.len() as u64;
        Ok(())
    }
}

fn moov(tracks: &[TrackKind]) -> Result<Moov, WriteError> {
    let mut trak = Vec::new();
    let mut trex = Vec::new();
    for (i, kind) in tracks.iter().enumerate() {
        let track_id = u32::try_from(i + 1).unwrap_or(u32::MAX);
        trex.push(Trex {
            track_id,
            default_sample_description_index: 1,
            ..Default::default()
        });
        let (handler, name, codec, video) = match kind {
            TrackKind::H264 {
                sps,
                pps,
                width,
                height,
            } => {
                let codec = Avc1 {
                    visual: Visual {
                        data_reference_index: 1,
                        width: *width,
                        height: *height,
                        horizresolution: 72.into(),
                        vertresolution: 72.into(),
                        frame_count: 1,
                        compressor: "".into(),
                        depth: 24,
                    },
                    avcc: Avcc {
                        configuration_version: 1,
                        avc_profile_indication: sps.get(1).copied().unwrap_or(66),
                        profile_compatibility: sps.get(2).copied().unwrap_or(0),
                        avc_level_indication: sps.get(3).copied().unwrap_or(31),
                        length_size: 4,
                        sequence_parameter_sets: vec![sps.clone()],
                        picture_parameter_sets: vec![pps.clone()],
                        ext: None,
                    },
                    btrt: None,
                    colr: None,
                    pasp: None,
                    taic: None,
                    fiel: None,
                    spatial: None,
                };
                (
                    b"vide",
                    "Video",
                    Codec::from(codec),
                    Some((*width, *height)),
                )
            }
            TrackKind::Opus { channels } => {
                let codec = Opus {
                    audio: Audio {
                        data_reference_index: 1,
                        channel_count: u16::from(*channels),
                        sample_size: 16,
                        sample_rate: 48_000u16.into(),
                    },
                    dops: Dops {
                        output_channel_count: *channels,
                        pre_skip: 0,
                        input_sample_rate: 48_000,
                        output_gain: 0,
                        channel_mapping: None,
                    },
                    btrt: None,
                };
                (b"soun", "Audio", Codec::from(codec), None)
            }
        };
        trak.push(Trak {
            tkhd: Tkhd {
                track_id,
                enabled: true,
                in_movie: true,
                volume: if video.is_some() { 0.into() } else { 1.into() },
                width: video.map_or(0, |v| v.0).into(),
                height: video.map_or(0, |v| v.1).into(),
                ..Default::default()
            },
            mdia: Mdia {
                mdhd: Mdhd {
                    timescale: kind.timescale(),
                    language: "und".into(),
                    ..Default::default()
                },
                hdlr: Hdlr {
                    handler: handler.into(),
                    name: name.into(),
                },
                minf: Minf {
                    vmhd: video.map(|_| Vmhd::default()),
                    smhd: video.is_none().then(Smhd::default),
                    dinf: Dinf {
                        dref: Dref {
                            entries: vec![Url::default().into()],
                        },
                    },
                    stbl: Stbl {
                        stsd: Stsd {
                            codecs: vec![codec],
                        },
                        stco: Some(Stco::default()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            ..Default::default()
        });
    }
    Ok(Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: u32::try_from(tracks.len() + 1).unwrap_or(u32::MAX),
            ..Default::default()
        },
        mvex: Some(Mvex { mehd: None, trex }),
        trak,
        ..Default::default()
    })
}
