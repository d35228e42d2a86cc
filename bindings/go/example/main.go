// What an engine does with libcommvq, in Go: load the library at run time,
// make a cache for a model's codebook, then for each layer append the new
// tokens' keys and values and attend with the queries.
//
//	go run ./example CODEBOOK [LIBRARY]
//
// LIBRARY defaults to $COMMVQ_LIBRARY, then libcommvq.so.0 on the loader's path.
package main

import (
	"fmt"
	"os"

	commvq "commvq.org/libcommvq/bindings/go"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) < 2 {
		return fmt.Errorf("usage: example CODEBOOK [LIBRARY]")
	}
	library := ""
	if len(os.Args) > 2 {
		library = os.Args[2]
	}
	lib, err := commvq.Open(library)
	if err != nil {
		return err
	}
	fmt.Println("libcommvq", lib.Version())

	cb, err := lib.LoadCodebook(os.Args[1])
	if err != nil {
		return err
	}
	defer cb.Close()
	info, err := cb.Info()
	if err != nil {
		return err
	}
	params := lib.DefaultCacheParams()
	params.MaxTokens = 4096
	params.Window = 16
	cache, err := cb.NewCache(params)
	if err != nil {
		return err
	}
	defer cache.Close()

	// Stand-in activations; an engine passes its own k, v and q buffers.
	kvRow, qRow := int(info.NKVHeads*info.HeadDim), int(info.NQHeads*info.HeadDim)
	const prompt = 48
	signal := func(i int) float32 { return float32((i*7919)%1000)/1000 - 0.5 }
	k, v, q := make([]float32, prompt*kvRow), make([]float32, prompt*kvRow), make([]float32, qRow)
	for i := range k {
		k[i], v[i] = signal(i), signal(i+1)
	}
	for i := range q {
		q[i] = signal(i + 2)
	}
	out, lse := make([]float32, qRow), make([]float32, info.NQHeads)
	for layer := uint32(0); layer < info.NLayers; layer++ {
		if err := cache.Append(layer, 0, k, v); err != nil {
			return err
		}
		if err := cache.Attend(layer, 0, q, out, lse, commvq.AttendCausal); err != nil {
			return err
		}
		fmt.Printf("layer %d: out[0] = %.6f, lse[0] = %.6f\n", layer, out[0], lse[0])
	}
	stats, err := cache.Stats()
	if err != nil {
		return err
	}
	fmt.Printf("%d tokens, %d compressed, %.1f bytes per compressed token\n",
		stats.Tokens, stats.CompressedTokens, stats.BytesPerCompressedToken)
	return nil
}
