package org.commvq;

/**
 * Settings of Codebook.train (commvq_train_params_t), starting at the
 * library's defaults; setters chain. The model name, value weights and the
 * progress callback are not available from Java (trained with none).
 */
public final class TrainParams {
  private long valueBits, keyStages, subCenters;
  private int pairLayout, scaleMode;
  private long nQHeads;
  private RopeInfo rope;
  private long maxSamples, keyMaxSteps, valueSteps, valueBatch;
  private float valueLr;
  private long seed, nThreads;
  private int device;
  private long valueHidden;

  public TrainParams() {
    NativeTrainParams d = new NativeTrainParams();
    try {
      valueBits = d.getValueBits();
      keyStages = d.getKeyStages();
      subCenters = d.getSubCenters();
      pairLayout = d.getPairLayout();
      scaleMode = d.getScaleMode();
      nQHeads = d.getNQHeads();
      rope = RopeInfo.of(d.getRope());
      maxSamples = d.getMaxSamples();
      keyMaxSteps = d.getKeyMaxSteps();
      valueSteps = d.getValueSteps();
      valueBatch = d.getValueBatch();
      valueLr = d.getValueLr();
      seed = d.getSeed();
      nThreads = d.getNThreads();
      device = d.getDevice();
      valueHidden = d.getValueHidden();
    } finally {
      d.delete();
    }
  }

  public TrainParams valueBits(long v) { valueBits = Commvq.u32(v, "valueBits"); return this; }
  public TrainParams keyStages(long v) { keyStages = Commvq.u32(v, "keyStages"); return this; }
  public TrainParams subCenters(long v) { subCenters = Commvq.u32(v, "subCenters"); return this; }
  public TrainParams pairLayout(int v) { pairLayout = v; return this; }
  public TrainParams scaleMode(int v) { scaleMode = v; return this; }
  public TrainParams nQHeads(long v) { nQHeads = Commvq.u32(v, "nQHeads"); return this; }
  public TrainParams rope(RopeInfo v) { rope = java.util.Objects.requireNonNull(v, "rope"); return this; }
  public TrainParams maxSamples(long v) { maxSamples = Commvq.u64(v, "maxSamples"); return this; }
  public TrainParams keyMaxSteps(long v) { keyMaxSteps = Commvq.u32(v, "keyMaxSteps"); return this; }
  public TrainParams valueSteps(long v) { valueSteps = Commvq.u32(v, "valueSteps"); return this; }
  public TrainParams valueBatch(long v) { valueBatch = Commvq.u32(v, "valueBatch"); return this; }
  public TrainParams valueLr(float v) { valueLr = v; return this; }
  /** Any 64 bits. */
  public TrainParams seed(long v) { seed = v; return this; }
  public TrainParams nThreads(long v) { nThreads = Commvq.u32(v, "nThreads"); return this; }
  public TrainParams device(int v) { device = v; return this; }
  public TrainParams valueHidden(long v) { valueHidden = Commvq.u32(v, "valueHidden"); return this; }

  public long valueBits() { return valueBits; }
  public long keyStages() { return keyStages; }
  public long subCenters() { return subCenters; }
  public int pairLayout() { return pairLayout; }
  public int scaleMode() { return scaleMode; }
  public long nQHeads() { return nQHeads; }
  public RopeInfo rope() { return rope; }
  public long maxSamples() { return maxSamples; }
  public long keyMaxSteps() { return keyMaxSteps; }
  public long valueSteps() { return valueSteps; }
  public long valueBatch() { return valueBatch; }
  public float valueLr() { return valueLr; }
  public long seed() { return seed; }
  public long nThreads() { return nThreads; }
  public int device() { return device; }
  public long valueHidden() { return valueHidden; }

  NativeTrainParams toNative() {
    NativeTrainParams p = new NativeTrainParams();
    p.setValueBits(valueBits);
    p.setKeyStages(keyStages);
    p.setSubCenters(subCenters);
    p.setPairLayout(pairLayout);
    p.setScaleMode(scaleMode);
    p.setNQHeads(nQHeads);
    NativeRopeInfo r = new NativeRopeInfo();
    try {
      rope.copyTo(r);
      p.setRope(r);
    } finally {
      r.delete();
    }
    p.setMaxSamples(maxSamples);
    p.setKeyMaxSteps(keyMaxSteps);
    p.setValueSteps(valueSteps);
    p.setValueBatch(valueBatch);
    p.setValueLr(valueLr);
    p.setSeed(seed);
    p.setNThreads(nThreads);
    p.setDevice(device);
    p.setValueHidden(valueHidden);
    return p;
  }
}
