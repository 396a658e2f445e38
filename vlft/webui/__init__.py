"""`vlft web-ui`: a Gradio app with a chat tab (InferEngine) and a training tab (starts `vlft sft`)."""
