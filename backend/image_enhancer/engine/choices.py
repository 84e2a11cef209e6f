"""The compute choices a user can make, in one place and without loading torch, so the command line
can offer them: which runtime runs the network, and in which precision."""

RUNTIMES = ("auto", "pytorch", "openvino", "ncnn")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
