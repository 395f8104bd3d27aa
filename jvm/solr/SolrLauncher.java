// Starts one real Solr 9 node over HTTP from the Maven jars in .jvm/solr, the way Solr's own
// tests do (JettySolrRunner wires CoreContainerProvider and SolrDispatchFilter into Jetty under
// /solr). SolrCloud mode with an embedded ZooKeeper comes from -DzkRun and the <solrcloud>
// section of solr.xml, so configset upload, the Collections API and aliases work as in
// production.
//
// Usage: java -cp '.jvm/solr/*' jvm/solr/SolrLauncher.java SOLR_HOME PORT
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.solr.embedded.JettyConfig;
import org.apache.solr.embedded.JettySolrRunner;

public class SolrLauncher {
  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: SolrLauncher SOLR_HOME PORT");
      System.exit(2);
    }
    String home = args[0];
    int port = Integer.parseInt(args[1]);
    JettyConfig config =
        JettyConfig.builder().setPort(port).setContext("/solr").stopAtShutdown(true).build();
    JettySolrRunner runner = new JettySolrRunner(home, new Properties(), config);
    CountDownLatch stopped = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  try {
                    runner.stop();
                  } catch (Exception e) {
                    e.printStackTrace();
                  } finally {
                    stopped.countDown();
                  }
                }));
    try {
      runner.start();
      if (runner.getCoreContainer() == null || runner.getCoreContainer().isShutDown()) {
        throw new IllegalStateException("Solr's CoreContainer did not start; see the log above");
      }
    } catch (Exception e) {
      e.printStackTrace();
      System.exit(1);
    }
    System.out.println("solr started on port " + runner.getLocalPort());
    stopped.await();
  }
}
