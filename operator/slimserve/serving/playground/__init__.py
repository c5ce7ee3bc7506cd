"""Static assets of the model playground page (HTML, JS, CSS), served by `slimserve.serving.web.playground`."""
