"""The Optimum ONNX route: export whisperkv checkpoints as Optimum's three Whisper ONNX models, and run
such folders (ours or anyone's) through the backend protocol with onnxruntime or TVM.

    export.py    checkpoint -> encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx
                 (and optionally decoder_model_merged.onnx, both decoders in one If: onnxruntime runs it;
                 for TVM, split.py lifts its two branches into the two decoders)
    layout.py    the names, order, dtypes and dynamic axes of those files (and the variants accepted)
    folder.py    the importer's checks: a wrong folder is refused naming the file and the tensor
    protocol.py  the backend protocol over the three graphs, for any engine
    ort.py       onnxruntime engine           tvm_onnx.py  TVM Relax engine (tvm.relax.frontend.onnx)
    split.py     a merged decoder's If branches as decoder_model / decoder_with_past_model graphs
    start_record.py  tvm-onnx's warm start: what a start derives from each file, kept beside its library
    tvm_libs.py  the seed's three libraries (`whisperkv compile-onnx`), scheduled (backends/tvm/schedule_rules.py)
    seed_demo.py the seed's pipeline, reproduced and fixed
    cli.py       `whisperkv export-onnx`, `whisperkv compile-onnx`

Nothing here is imported by `import whisperkv.backends.onnx` beyond this docstring: onnx, onnxruntime and tvm
are optional, and each module imports what it needs.
"""
