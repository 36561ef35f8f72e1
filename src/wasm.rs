//! The JavaScript API of the browser build: `Model` and `Tokenizer` for wasm-bindgen
//! (`web/build.sh` makes the ES module `wgnn.js` and `wgnn_bg.wasm`).
//!
//! ```js
//! import init, { Model, Tokenizer } from "./wgnn.js";
//! await init();
//! const model = await Model.load(bytes, { backend: "auto" });   // bytes: a .keras file
//! const out = await model.predict(pixels, [n, 32, 32, 3]);      // { data: Float32Array, shape }
//! ```
//!
//! The same loader, graph and kernels as the native crate: the GPU runs the WGSL kernels on
//! the browser's WebGPU adapter, the CPU the ndarray reference path on the page's thread (rayon
//! has no threads to start there and runs everything on the calling one). Every error rejects
//! the promise (or throws) with a JavaScript `Error` whose message is the one line the command
//! line prints after `error: `.

use std::rc::Rc;

use js_sys::{Array, Float32Array, Int32Array, Object, Reflect, Uint8Array};
use ndarray::{Array2, ArrayD, IxDyn};
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::error::Error;
use crate::graph::{DType, Graph};
use crate::model::Backend;
use crate::text::tokenizer::Side;
use crate::PreparedInput;

/// A `wgnn::Error` as a JavaScript `Error` carrying its one-line message.
fn js_error(e: Error) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn usage(message: impl Into<String>) -> JsValue {
    js_error(Error::Usage(message.into()))
}

/// The backend a model was loaded for and what it runs on.
#[derive(Clone)]
struct Placement {
    backend: Backend,
    /// `gpu: <adapter>` or `cpu: ...`.
    label: String,
}

/// A Keras model loaded in the page (`Model.load`).
#[wasm_bindgen]
pub struct Model {
    inner: Rc<crate::Model>,
    placement: Placement,
}

#[wasm_bindgen]
impl Model {
    /// `Model.load(bytes, { backend: "auto" | "gpu" | "cpu", name })`: `bytes` is a
    /// `Uint8Array` holding a `.keras` file (a legacy `.h5` model file works too); `name`
    /// (default `model.keras`) names it in error messages. Resolves once the model is ready on
    /// its backend: for the GPU the device is created, the weights uploaded and the kernels
    /// compiled. `auto` takes the browser's WebGPU adapter when there is one, else the CPU.
    pub async fn load(bytes: Uint8Array, options: JsValue) -> Result<Model, JsValue> {
        let backend = match option_string(&options, "backend")? {
            Some(b) => b.parse::<Backend>().map_err(js_error)?,
            None => Backend::Auto,
        };
        let name = option_string(&options, "name")?.unwrap_or_else(|| "model.keras".into());
        let inner = crate::Model::load_bytes(&name, &bytes.to_vec()).map_err(js_error)?;
        let cpu_label = "cpu: WebAssembly, one thread".to_string();
        let placement = match backend {
            Backend::Cpu => Placement {
                backend,
                label: cpu_label,
            },
            Backend::Gpu => Placement {
                backend,
                label: format!(
                    "gpu: {}",
                    inner.gpu_adapter_name_async().await.map_err(js_error)?
                ),
            },
            Backend::Auto => match inner.gpu_adapter_name_async().await {
                Ok(adapter) => Placement {
                    backend: Backend::Gpu,
                    label: format!("gpu: {adapter}"),
                },
                Err(Error::Gpu(msg)) if crate::gpu::is_no_adapter(&msg) => Placement {
                    backend: Backend::Cpu,
                    label: format!("{cpu_label} ({msg})"),
                },
                Err(e) => return Err(js_error(e)),
            },
        };
        Ok(Model {
            inner: Rc::new(inner),
            placement,
        })
    }

    /// Where predictions run: `gpu: <adapter name> (BrowserWebGpu)` or `cpu: ...`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.placement.label.clone()
    }

    /// The model as JSON-like data: name, inputs, outputs (shapes without the batch axis),
    /// each layer (class, output shapes, parameters, FLOPs per item, inputs), parameter total.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let text = info_json(self.inner.graph()).to_string();
        js_sys::JSON::parse(&text)
    }

    /// `model.predict(data, shape)`: runs the model's (single) input, `data` a `Float32Array`
    /// (or an `Int32Array` of token ids) of `shape` (the batch's shape, e.g. `[n, 32, 32, 3]`).
    /// Resolves to the first output `{ data: Float32Array, shape: number[] }`; a model with
    /// several outputs adds `outputs`, one such object per output.
    pub fn predict(&self, data: JsValue, shape: JsValue) -> js_sys::Promise {
        let model = Rc::clone(&self.inner);
        let backend = self.placement.backend;
        wasm_bindgen_futures::future_to_promise(async move {
            let shape = shape_from_js(&shape)?;
            let input = prepare(&model, &data, &shape)?;
            let outputs = model
                .run_all_async(std::slice::from_ref(&input), backend)
                .await
                .map_err(js_error)?;
            outputs_to_js(&outputs)
        })
    }

    /// `model.predictText(["kalimat ...", ...])`: raw sentences through the model's own
    /// TextVectorization layer. Resolves as `predict` does, one row per sentence.
    #[wasm_bindgen(js_name = predictText)]
    pub fn predict_text(&self, texts: JsValue) -> js_sys::Promise {
        self.predict_texts(texts, None)
    }

    /// `model.predictTokenized(texts, tokenizer)`: for a model that takes token ids, the
    /// sentences through a Keras `Tokenizer`, padded and cut at the end to the model's sequence
    /// length (as the command line's `sentiment --tokenizer` does).
    #[wasm_bindgen(js_name = predictTokenized)]
    pub fn predict_tokenized(&self, texts: JsValue, tokenizer: &Tokenizer) -> js_sys::Promise {
        self.predict_texts(texts, Some(tokenizer))
    }
}

impl Model {
    fn predict_texts(&self, texts: JsValue, tokenizer: Option<&Tokenizer>) -> js_sys::Promise {
        let model = Rc::clone(&self.inner);
        let backend = self.placement.backend;
        // The tokenizer is only borrowed for this call, so the ids are made before the promise.
        let input = strings_from_js(&texts).and_then(|texts| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let ids = text_ids(&model, tokenizer, &refs).map_err(js_error)?;
            model.prepare_ids(ids.view()).map_err(js_error)
        });
        wasm_bindgen_futures::future_to_promise(async move {
            let input = input?;
            let outputs = model
                .run_all_async(std::slice::from_ref(&input), backend)
                .await
                .map_err(js_error)?;
            outputs_to_js(&outputs)
        })
    }
}

/// A Keras `Tokenizer` (`tokenizer.to_json()`), for models that take token ids.
#[wasm_bindgen]
pub struct Tokenizer {
    inner: crate::text::Tokenizer,
}

#[wasm_bindgen]
impl Tokenizer {
    /// `Tokenizer.fromJson(json)`: the text `tokenizer.to_json()` wrote (or `wgnn tokenizer fit`).
    #[wasm_bindgen(js_name = fromJson)]
    pub fn from_json(json: &str) -> Result<Tokenizer, JsValue> {
        let inner =
            crate::text::Tokenizer::from_json_str(json, std::path::Path::new("tokenizer.json"))
                .map_err(js_error)?;
        Ok(Tokenizer { inner })
    }

    /// Keras's `texts_to_sequences`: one array of token ids per text.
    #[wasm_bindgen(js_name = texts_to_sequences)]
    pub fn texts_to_sequences(&self, texts: JsValue) -> Result<Array, JsValue> {
        let texts = strings_from_js(&texts)?;
        let out = Array::new();
        for seq in self.inner.texts_to_sequences(&texts) {
            let row: Vec<i32> = seq.iter().map(|&id| id as i32).collect();
            out.push(&Int32Array::from(&row[..]));
        }
        Ok(out)
    }
}

/// Token ids (N, T) for raw texts, as `wgnn::eval::texts_to_input` makes them natively.
fn text_ids(
    model: &crate::Model,
    tokenizer: Option<&Tokenizer>,
    texts: &[&str],
) -> crate::Result<Array2<i64>> {
    match (&model.graph().text_vectorization, tokenizer) {
        (Some(tv), _) => Ok(tv.vectorize(texts)),
        (None, Some(tok)) => {
            let len =
                *model.graph().single_input()?.shape.first().ok_or_else(|| {
                    Error::Input("the model's input has no sequence length".into())
                })?;
            Ok(tok
                .inner
                .texts_to_padded(texts, len, Side::Post, Side::Post))
        }
        (None, None) => Err(Error::Usage(
            "this model has no TextVectorization layer: use predictTokenized(texts, tokenizer)"
                .into(),
        )),
    }
}

/// `options[key]` as a string; absent, `undefined` or `null` is `None`.
fn option_string(options: &JsValue, key: &str) -> Result<Option<String>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    if !options.is_object() {
        return Err(usage(
            "Model.load: options must be an object such as { backend: \"auto\" }",
        ));
    }
    let value = Reflect::get(options, &JsValue::from_str(key))?;
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    value
        .as_string()
        .map(Some)
        .ok_or_else(|| usage(format!("Model.load: option '{key}' must be a string")))
}

fn shape_from_js(shape: &JsValue) -> Result<Vec<usize>, JsValue> {
    if !Array::is_array(shape) {
        return Err(usage(
            "predict: shape must be an array of sizes, e.g. [n, 32, 32, 3]",
        ));
    }
    Array::from(shape)
        .iter()
        .map(|d| match d.as_f64() {
            Some(v) if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 => Ok(v as usize),
            _ => Err(usage(format!(
                "predict: shape entries must be non-negative integers, found {d:?}"
            ))),
        })
        .collect()
}

fn strings_from_js(texts: &JsValue) -> Result<Vec<String>, JsValue> {
    if !Array::is_array(texts) {
        return Err(usage("texts must be an array of strings"));
    }
    Array::from(texts)
        .iter()
        .map(|t| {
            t.as_string()
                .ok_or_else(|| usage("texts must be an array of strings"))
        })
        .collect()
}

/// Checks `data` against `shape` and the model's input and converts it for the backends.
fn prepare(
    model: &crate::Model,
    data: &JsValue,
    shape: &[usize],
) -> Result<PreparedInput, JsValue> {
    let elements: usize = shape.iter().product();
    let check_len = |len: u32| {
        if len as usize == elements {
            Ok(())
        } else {
            Err(usage(format!(
                "predict: data holds {len} values but shape {shape:?} needs {elements}"
            )))
        }
    };
    if let Some(floats) = data.dyn_ref::<Float32Array>() {
        check_len(floats.length())?;
        let x = ArrayD::from_shape_vec(IxDyn(shape), floats.to_vec())
            .map_err(|e| usage(format!("predict: {e}")))?;
        model.prepare_input(0, x.view()).map_err(js_error)
    } else if let Some(ints) = data.dyn_ref::<Int32Array>() {
        check_len(ints.length())?;
        if shape.len() != 2 {
            return Err(usage(format!(
                "predict: token ids are shaped (N, T), found shape {shape:?}"
            )));
        }
        let ids: Vec<i64> = ints.to_vec().into_iter().map(i64::from).collect();
        let ids = Array2::from_shape_vec((shape[0], shape[1]), ids)
            .map_err(|e| usage(format!("predict: {e}")))?;
        if model.graph().inputs.len() != 1 {
            return Err(js_error(Error::Input(format!(
                "predict takes one input; this model has {}",
                model.graph().inputs.len()
            ))));
        }
        model.prepare_ids_for(0, ids.view()).map_err(js_error)
    } else {
        Err(usage(
            "predict: data must be a Float32Array (or an Int32Array of token ids)",
        ))
    }
}

fn output_to_js(array: &ArrayD<f32>) -> Result<JsValue, JsValue> {
    let out = Object::new();
    let values: Vec<f32> = array.iter().copied().collect();
    Reflect::set(&out, &"data".into(), &Float32Array::from(&values[..]))?;
    let shape = Array::new();
    for &d in array.shape() {
        shape.push(&JsValue::from(d as f64));
    }
    Reflect::set(&out, &"shape".into(), &shape)?;
    Ok(out.into())
}

fn outputs_to_js(outputs: &[ArrayD<f32>]) -> Result<JsValue, JsValue> {
    let first = outputs
        .first()
        .ok_or_else(|| js_error(Error::Internal("the model has no outputs".into())))?;
    let out = output_to_js(first)?;
    if outputs.len() > 1 {
        let all = Array::new();
        for o in outputs {
            all.push(&output_to_js(o)?);
        }
        Reflect::set(&out, &"outputs".into(), &all)?;
    }
    Ok(out)
}

/// What `wgnn info MODEL` prints, as data.
fn info_json(graph: &Graph) -> serde_json::Value {
    let port = |p: &crate::graph::Port| {
        let v = graph.value(p.value);
        json!({
            "name": p.name,
            "shape": v.shape,
            "dtype": match v.dtype { DType::F32 => "float32", DType::Ids => "int32", DType::Mask => "bool" },
        })
    };
    let layers: Vec<serde_json::Value> = graph
        .nodes
        .iter()
        .map(|node| {
            json!({
                "name": node.name,
                "class": node.class,
                "output_shapes": node.outputs.iter().map(|&v| graph.value(v).shape.clone()).collect::<Vec<_>>(),
                "params": graph.node_param_count(node),
                "flops_per_item": graph.node_flops(node),
                "inputs": node.inputs.iter().map(|&v| graph.value_name(v)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "name": graph.name,
        "inputs": graph.inputs.iter().map(port).collect::<Vec<_>>(),
        "outputs": graph.outputs.iter().map(port).collect::<Vec<_>>(),
        "layers": layers,
        "params": graph.param_count(),
        "flops_per_item": graph.flops_per_item(),
        "text_vectorization": graph.text_vectorization.as_ref().map(|tv| json!({
            "name": tv.name,
            "vocabulary_size": tv.vocabulary.len(),
            "output_sequence_length": tv.output_sequence_length,
        })),
    })
}
