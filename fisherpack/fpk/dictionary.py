"""The preset dictionary of a version-3 header (docs/FORMAT.md, section 3 and appendix A).

A version-3 header is a raw DEFLATE stream whose window starts out holding these bytes, so the
JSON keys and the settings every file repeats cost a few bits of back-reference each instead of
their text: the LeNet-5 reference file's header, provenance included, shrinks from 677 bytes to
282. The bytes are part of the format: they never change within a version.

The order follows the header's own (sorted keys): meta first, then the tensor entries, whose
fragments repeat once per tensor and so sit last, nearest to the text that refers to them.
"""

HEADER_DICT = (
    b'{"meta":{"checkpoint":"","config":{"allocation":"waterfill","bits":4.0,"criterion":"obd","entropy":true,'
    b'"exclude":[],"group_bits":[6,4,2],"groups":1,"include":[],"magnitude_share":0.5,"overrides":[],'
    b'"quantize_biases":true,"rate":0.9,"scope":"global","seed":0,"version":1},"fisher":"adam",'
    b'"fisherpack":"0.1.0","model":"","original":{"fp32_bytes":,"params":},"pipeline":{"augment":2,'
    b'"batch_size":64,"compress":{"allocation":"waterfill","bits":4.0,"criterion":"obd","entropy":true,'
    b'"exclude":[],"group_bits":[6,4,2],"groups":1,"include":[],"magnitude_share":0.5,"overrides":[],'
    b'"quantize_biases":false,"rate":0.99,"scope":"global","seed":0,"version":1},"distill":0.5,"epochs":,'
    b'"final_epochs":,"finetune_epochs":1.0,"finetune_lr":0.001,"fisher":"adam","fisher_samples":1000,'
    b'"lr":0.001,"lr_schedule":"cosine","model":"lenet5","qat_epochs":,"qat_lr":0.0001,"rounds":,"seed":0,'
    b'"structured":0.,"version":1}},"tensors":['
    b'{"kind":"alias","name":"","target":""},'
    b'{"data":{"encoding":"plain","length":},"dtype":"int64","kind":"raw","name":".num_batches_tracked","shape":[]},'
    b'{"data":{"encoding":"zlib","length":},"dtype":"float32","kind":"raw","name":".running_mean","shape":[]},'
    b'".running_var",'
    b'{"codes":[{"encoding":"packed","length":}],"groups":[{"bits":8,"count":,"exp":-8,"grid":"odd"}],'
    b'"ids":{"encoding":"packed","length":},"kept":,"kind":"quant","mask":{"encoding":"all","length":0},'
    b'"name":".bias","shape":[]},'
    b'{"codes":[{"encoding":"ans","length":},{"encoding":"packed","length":}],'
    b'"groups":[{"bits":4,"count":,"exp":-4,"grid":"int"},{"bits":2,"count":,"exp":-3,"grid":"odd"}],'
    b'"kept":,"kind":"quant","mask":{"encoding":"bitmap","length":},"name":".weight","shape":[]},'
    b'{"codes":[{"encoding":"ans","length":}],"groups":[{"bits":4,"count":,"exp":-5,"grid":"int"}],'
    b'"kept":,"kind":"quant","mask":{"buckets_length":,"encoding":"gaps_ans","length":},"name":"'
)
