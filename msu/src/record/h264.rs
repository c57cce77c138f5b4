//! H264 out of RTP (RFC 6184, packetization mode 1: single NAL units,
//! STAP-A, FU-A) into access units, and the picture size out of a sequence
//! parameter set.

/// One picture: every NAL unit of one RTP timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// Its RTP timestamp.
    pub rtp_ts: u32,
    /// Its NAL units, without start codes or length prefixes.
    pub nals: Vec<Vec<u8>>,
}

impl AccessUnit {
    /// Whether it holds an IDR slice (a decoder can start here).
    pub fn is_keyframe(&self) -> bool {
        self.nals.iter().any(|n| nal_type(n) == 5)
    }
}

/// The type of NAL unit `nal` (0 for an empty one).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// Gathers RTP payloads into access units. A loss inside a picture spoils
/// that picture (it is dropped, never written half).
#[derive(Debug, Default)]
pub struct Depacketizer {
    ts: Option<u32>,
    nals: Vec<Vec<u8>>,
    fragment: Option<Vec<u8>>,
    broken: bool,
}

impl Depacketizer {
    /// Takes one packet's payload, in sequence order; `lost_before` says
    /// packets are missing just before it. Returns a picture it completed.
    pub fn push(
        &mut self,
        lost_before: bool,
        rtp_ts: u32,
        marker: bool,
        payload: &[u8],
    ) -> Option<AccessUnit> {
        let mut done = None;
        if self.ts.is_some_and(|ts| ts != rtp_ts) {
            // A new picture began before the old one's marker (lost).
            done = self.finish();
        }
        if lost_before {
            self.broken = true;
            self.fragment = None;
        }
        self.ts = Some(rtp_ts);
        self.take(payload);
        if marker {
            // A picture whose marker came is complete; one that also had a
            // earlier unfinished picture returns that one only if intact.
            let last = self.finish();
            return done.or(last);
        }
        done
    }

    fn take(&mut self, payload: &[u8]) {
        let Some(&first) = payload.first() else {
            return;
        };
        match first & 0x1f {
            1..=23 => self.nals.push(payload.to_vec()),
            24 => {
                // STAP-A: [size u16][NAL] ...
                let mut rest = &payload[1..];
                while rest.len() >= 2 {
                    let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let Some(nal) = rest.get(2..2 + size) else {
                        self.broken = true;
                        return;
                    };
                    if !nal.is_empty() {
                        self.nals.push(nal.to_vec());
                    }
                    rest = &rest[2 + size..];
                }
            }
            28 => {
                // FU-A: [indicator][S E R type][fragment]
                let Some(&header) = payload.get(1) else {
                    self.broken = true;
                    return;
                };
                let body = &payload[2..];
                if header & 0x80 != 0 {
                    let mut nal = Vec::with_capacity(body.len() * 4 + 1);
                    nal.push((first & 0xe0) | (header & 0x1f));
                    nal.extend_from_slice(body);
                    self.fragment = Some(nal);
                } else if let Some(nal) = &mut self.fragment {
                    nal.extend_from_slice(body);
                } else {
                    // The start of this NAL was lost.
                    self.broken = true;
                    return;
                }
                if header & 0x40 != 0
                    && let Some(nal) = self.fragment.take()
                {
                    self.nals.push(nal);
                }
            }
            // STAP-B, MTAP, FU-B: not in packetization mode 1.
            _ => self.broken = true,
        }
    }

    fn finish(&mut self) -> Option<AccessUnit> {
        let ts = self.ts.take()?;
        let nals = std::mem::take(&mut self.nals);
        let broken = std::mem::take(&mut self.broken) || self.fragment.take().is_some();
        (!broken && !nals.is_empty()).then_some(AccessUnit { rtp_ts: ts, nals })
    }
}

/// Reads Exp-Golomb coded fields of an RBSP (emulation prevention removed).
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.at / 8)?;
        let bit = (byte >> (7 - self.at % 8)) & 1;
        self.at += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |v, _| Some((v << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i64> {
        let v = i64::from(self.ue()?);
        Some(if v % 2 == 1 { (v + 1) / 2 } else { -(v / 2) })
    }
}

/// The RBSP of a NAL unit: its payload without emulation prevention bytes.
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal.iter().skip(1) {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// The picture size (width, height) a sequence parameter set gives, cropped;
/// `None` when it cannot be read.
pub fn sps_size(sps: &[u8]) -> Option<(u16, u16)> {
    if nal_type(sps) != 7 {
        return None;
    }
    let data = rbsp(sps);
    let mut r = Bits { data: &data, at: 0 };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma
        r.ue()?; // bit_depth_chroma
        r.bit()?; // qpprime_y_zero_transform_bypass
        if r.bit()? == 1 {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()? {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()? + 1;
    let height_units = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.bit()? == 1 {
        left = r.ue()?;
        right = r.ue()?;
        top = r.ue()?;
        bottom = r.ue()?;
    }
    let (crop_x, crop_y) = match chroma_format {
        0 => (1, 2 - frame_mbs_only),
        1 => (2, 2 * (2 - frame_mbs_only)),
        2 => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let width = width_mbs
        .checked_mul(16)?
        .checked_sub(crop_x * (left + right))?;
    let height = (2 - frame_mbs_only)
        .checked_mul(height_units)?
        .checked_mul(16)?
        .checked_sub(crop_y * (top + bottom))?;
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fu_a_and_stap_a_make_one_picture() {
        let mut d = Depacketizer::default();
        // STAP-A with an SPS and a PPS.
        let stap = [24u8, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert_eq!(d.push(false, 90, false, &stap), None);
        // An IDR slice in two FU-A fragments.
        assert_eq!(d.push(false, 90, false, &[0x7c, 0x85, 1, 2]), None);
        let au = d.push(false, 90, true, &[0x7c, 0x45, 3]).unwrap();
        assert_eq!(
            au.nals,
            vec![vec![0x67, 0x42], vec![0x68, 0xce], vec![0x65, 1, 2, 3]]
        );
        assert!(au.is_keyframe());
    }

    #[test]
    fn a_loss_inside_a_picture_drops_it_and_not_the_next() {
        let mut d = Depacketizer::default();
        assert_eq!(d.push(false, 1, false, &[0x7c, 0x85, 1]), None);
        // The end fragment of 1 lost; 2 starts after a gap.
        // Picture 2 may have lost its start: dropped too.
        assert_eq!(d.push(true, 2, true, &[0x41, 9]), None);
        let au = d.push(false, 3, true, &[0x41, 7]).unwrap();
        assert_eq!((au.rtp_ts, au.nals.len()), (3, 1));
    }

    #[test]
    fn the_size_comes_from_the_sps() {
        // x264, Constrained Baseline, 320x240.
        let sps = [
            0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
            0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0xa4, 0x80,
        ];
        assert_eq!(sps_size(&sps), Some((320, 240)));
        // x264, High, 640x360 (368 rows of macroblocks, cropped by 8).
        let sps = [
            0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00,
            0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16, 0x2d, 0x96,
        ];
        assert_eq!(sps_size(&sps), Some((640, 360)));
        assert_eq!(sps_size(&[0x67, 0x42]), None, "cut short");
    }
}
