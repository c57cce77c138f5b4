//! Reads back what [`super::fmp4`] wrote: the tracks of the header, then
//! the samples one fragment at a time (memory is one fragment). A file cut
//! short (its MSU killed) ends at its last complete fragment.

use super::fmp4::{Sample, TrackKind};
use mp4_atom::{Atom, Codec, Header, Moof, Moov, ReadAtom, ReadFrom};
use std::io::{BufReader, Read};
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file system refused.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not an MP4 file of ours.
    #[error("{0}")]
    Format(String),
}

/// A recorded file, read fragment by fragment.
pub struct Mp4Reader {
    file: BufReader<std::fs::File>,
    tracks: Vec<TrackKind>,
    /// Track id -> index in `tracks`.
    ids: Vec<u32>,
    /// A moof read, its mdat not yet.
    pending: Option<Moof>,
}

impl Mp4Reader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let mut file = BufReader::new(std::fs::File::open(path)?);
        loop {
            let header = Header::read_from(&mut file)
                .map_err(|e| ReadError::Format(format!("no moov: {e}")))?;
            if header.kind == Moov::KIND {
                let moov = Moov::read_atom(&header, &mut file)
                    .map_err(|e| ReadError::Format(format!("moov: {e}")))?;
                let mut tracks = Vec::new();
                let mut ids = Vec::new();
                for trak in &moov.trak {
                    let kind = match trak.mdia.minf.stbl.stsd.codecs.first() {
                        Some(Codec::Avc1(avc1)) => TrackKind::H264 {
                            sps: avc1
                                .avcc
                                .sequence_parameter_sets
                                .first()
                                .cloned()
                                .unwrap_or_default(),
                            pps: avc1
                                .avcc
                                .picture_parameter_sets
                                .first()
                                .cloned()
                                .unwrap_or_default(),
                            width: avc1.visual.width,
                            height: avc1.visual.height,
                        },
                        Some(Codec::Opus(opus)) => TrackKind::Opus {
                            channels: opus.dops.output_channel_count,
                        },
                        _ => continue,
                    };
                    tracks.push(kind);
                    ids.push(trak.tkhd.track_id);
                }
                return Ok(Self {
                    file,
                    tracks,
                    ids,
                    pending: None,
                });
            }
            skip(&mut file, &header)?;
        }
    }

    /// The file's tracks (H264 and Opus; others are left out).
    pub fn tracks(&self) -> &[TrackKind] {
        &self.tracks
    }

    /// The samples of the next fragment as (track index, sample), in the
    /// file's order; `None` at the end (or where a cut file stops).
    pub fn next_fragment(&mut self) -> Option<Vec<(usize, Sample)>> {
        loop {
            let header = Header::read_from(&mut self.file).ok()?;
            if header.kind == Moof::KIND {
                self.pending = Some(Moof::read_atom(&header, &mut self.file).ok()?);
                continue;
            }
            if header.kind != mp4_atom::Mdat::KIND {
                skip(&mut self.file, &header).ok()?;
                continue;
            }
            let size = header.size?;
            let mut data = vec![0u8; size];
            self.file.read_exact(&mut data).ok()?;
            let Some(moof) = self.pending.take() else {
                continue;
            };
            return Some(self.samples(&moof, &data, size));
        }
    }

    /// The samples `moof` describes in `mdat` (offsets count from the
    /// moof's start: the mdat body begins at moof size + 8).
    fn samples(&self, moof: &Moof, mdat: &[u8], _mdat_size: usize) -> Vec<(usize, Sample)> {
        let mut probe = Vec::new();
        let moof_size = mp4_atom::Encode::encode(moof, &mut probe).map_or(0, |()| probe.len());
        let mut out = Vec::new();
        for traf in &moof.traf {
            let Some(track) = self.ids.iter().position(|id| *id == traf.tfhd.track_id) else {
                continue;
            };
            let mut dts = traf.tfdt.as_ref().map_or(0, |t| t.base_media_decode_time);
            for run in &traf.trun {
                let start = run
                    .data_offset
                    .and_then(|o| usize::try_from(o).ok())
                    .and_then(|o| o.checked_sub(moof_size + 8))
                    .unwrap_or(0);
                let mut at = start;
                for entry in run.samples.iter() {
                    let size = entry.size.unwrap_or(0) as usize;
                    let Some(data) = mdat.get(at..at + size) else {
                        break;
                    };
                    let sync = entry.flags.is_none_or(|f| f & 0x0001_0000 == 0);
                    out.push((
                        track,
                        Sample {
                            dts,
                            data: data.to_vec(),
                            sync,
                        },
                    ));
                    at += size;
                    dts += u64::from(entry.duration.unwrap_or(0));
                }
            }
        }
        out
    }
}

fn skip(r: &mut impl Read, header: &Header) -> Result<(), ReadError> {
    let Some(size) = header.size else {
        return Err(ReadError::Format("a box without a size".into()));
    };
    std::io::copy(&mut r.take(size as u64), &mut std::io::sink())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::fmp4::Fmp4File;

    #[test]
    fn what_was_written_is_read_back_fragment_by_fragment() {
        let dir = std::env::temp_dir().join(format!("pilot-msu-reader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("a.mp4");
        let _ = std::fs::remove_file(&path);
        let tracks = [
            TrackKind::H264 {
                sps: vec![0x67, 0x42, 0xc0, 0x0d],
                pps: vec![0x68, 0xce],
                width: 320,
                height: 240,
            },
            TrackKind::Opus { channels: 2 },
        ];
        let mut f = Fmp4File::create(&path, &tracks).unwrap_or_else(|e| panic!("{e}"));
        let mut written = Vec::new();
        // 3 s: a picture every 3,600 ticks (25 fps), Opus every 960.
        for i in 0..75u64 {
            let s = Sample {
                dts: i * 3_600,
                data: vec![i as u8; 50],
                sync: i % 25 == 0,
            };
            f.push(0, s.clone()).unwrap_or_else(|e| panic!("{e}"));
            written.push((0, s));
        }
        for i in 0..150u64 {
            let s = Sample {
                dts: i * 960,
                data: vec![i as u8; 20],
                sync: true,
            };
            f.push(1, s.clone()).unwrap_or_else(|e| panic!("{e}"));
            written.push((1, s));
        }
        f.finish().unwrap_or_else(|e| panic!("{e}"));
        let mut r = Mp4Reader::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.tracks(), &tracks);
        let mut read = Vec::new();
        let mut fragments = 0;
        while let Some(samples) = r.next_fragment() {
            fragments += 1;
            read.extend(samples);
        }
        assert!(fragments >= 3, "{fragments} fragments");
        let sorted = |mut v: Vec<(usize, Sample)>| {
            v.sort_by_key(|(t, s)| (*t, s.dts));
            v
        };
        assert_eq!(sorted(read), sorted(written));
        std::fs::remove_dir_all(&dir).ok();
    }
}
