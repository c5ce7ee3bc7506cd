"""Names of the files an artifact carries beside its weights, shared by the families and their loaders."""

TOKENIZER_FILE = "tokenizer.json"  # text families: the tokenizer, in the tokenizers library's JSON
PROGRAM_FILE = "program.pt2"  # torch-export: the program is the architecture; the weights are loaded into it
